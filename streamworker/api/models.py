"""Request and response bodies of the HTTP API (msgspec Structs; the OpenAPI document is
generated from them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from ..stats import QueueStats
from ..status import TaskStatus

__all__ = [
    "CancelConflict",
    "CancelResponse",
    "ErrorBody",
    "HealthResponse",
    "Priority",
    "QueueStats",
    "SubmitRequest",
    "SubmitResponse",
    "TaskState",
    "TaskStatus",
]

Priority = Literal["critical", "high", "normal", "low"]
TaskState = Literal[
    "queued", "scheduled", "running", "retrying", "completed", "failed", "cancelled"
]


class SubmitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """The seed's submit body. Unknown fields are ignored, so newer clients keep working."""

    task_type: Annotated[
        str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^\S+$", examples=["care_alert"])
    ]
    payload: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="JSON object checked against the task type's contract",
            examples=[{"patient_ref": "p-1", "alert": "fall"}],
        ),
    ]
    priority: Priority = "normal"
    scheduled_for: Annotated[
        datetime | None,
        msgspec.Meta(description="RFC 3339 with a time zone; not run before then"),
    ] = None
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None = None
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    correlation_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    partition_key: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=200,
                description="Tasks with the same key go to the same partition and are read in "
                "submit order (README 'Scaling out'); never stored or logged",
            ),
        ]
        | None
    ) = None


class SubmitResponse(msgspec.Struct, kw_only=True):
    task_id: str
    status: TaskState
    scheduled_for: str | None
    estimated_completion: Annotated[
        str | None,
        msgspec.Meta(
            description=(
                "When the task should be done, from the backlog ahead of it and the recent "
                "processing rate; null when nothing is being processed while work waits"
            )
        ),
    ]


class CancelResponse(msgspec.Struct, kw_only=True):
    task_id: str
    status: TaskState
    cancelled: bool


class ErrorBody(msgspec.Struct, kw_only=True):
    status_code: int
    detail: str


class HealthResponse(msgspec.Struct, kw_only=True):
    status: str
    detail: str | None = None


class CancelConflict(msgspec.Struct, kw_only=True):
    """409 from cancel: the task is past queued/scheduled; ``status`` says where it is."""

    status_code: int
    detail: str
    task_id: str
    status: TaskState
