"""``/api/v1/tasks``: submit, status, cancel, stats (CONTRACT.md §5, §7)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from litestar import Response, get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter

from ...stats import QueueStats, collect_stats
from ...status import TERMINAL_STATES, TaskStatus
from ...wire import format_time
from ..models import CancelConflict, CancelResponse, ErrorBody, SubmitRequest, SubmitResponse
from ..services import ApiServices, services
from .checks import all_of, json_body, query_allowing

__all__ = ["cancel_task", "queue_stats", "submit_task", "task_status"]

TaskId = Annotated[str, PathParameter(min_length=1, max_length=200, description="The task's id")]

_errors = {
    400: ResponseSpec(ErrorBody, description="Invalid request or task"),
    401: ResponseSpec(ErrorBody, description="Missing or invalid bearer token"),
    503: ResponseSpec(ErrorBody, description="Redis unavailable; see Retry-After"),
}


def _not_found(task_id: str) -> NotFoundException:
    return NotFoundException(f"task {task_id} not found (unknown, or expired after its retention)")


@post(
    "/tasks/submit",
    status_code=202,
    before_request=all_of(query_allowing(), json_body),
    summary="Submit a task",
    description=(
        "Validates the payload against the task type's contract and publishes it. A repeated "
        "idempotency key (body field or Idempotency-Key header) returns the first task's id "
        "and its current status, without enqueueing again; then the Idempotent-Replayed "
        "header is true."
    ),
    tags=["tasks"],
    responses={
        **_errors,
        413: ResponseSpec(ErrorBody, description="Body over MAX_PAYLOAD_BYTES"),
        415: ResponseSpec(ErrorBody, description="Body is not JSON"),
    },
)
async def submit_task(
    data: JSONBody[SubmitRequest],
    state: State,
    idempotency_header: Annotated[
        str | None,
        HeaderParameter(name="Idempotency-Key", min_length=1, max_length=200, required=False),
    ] = None,
) -> Response[SubmitResponse]:
    svc = services(state)
    key = data.idempotency_key
    if idempotency_header is not None:
        if key is not None and key != idempotency_header:
            raise ClientException("the Idempotency-Key header and idempotency_key field differ")
        key = idempotency_header
    now = time.time()
    task_id = str(uuid.uuid4())
    published = await svc.producer.publish(
        data.task_type,
        data.payload,
        priority=data.priority,
        scheduled_for=data.scheduled_for,
        max_retries=data.max_retries,
        timeout_seconds=data.timeout_seconds,
        idempotency_key=key,
        correlation_id=data.correlation_id,
        task_id=task_id,
        partition_key=data.partition_key,
    )
    due = data.scheduled_for.timestamp() if data.scheduled_for is not None else now
    if published == task_id:
        estimate = svc.sampler.estimate(data.priority, due, now)
        body = SubmitResponse(
            task_id=task_id,
            status="scheduled" if due > now else "queued",
            scheduled_for=format_time(due) if data.scheduled_for is not None else None,
            estimated_completion=format_time(estimate) if estimate is not None else None,
        )
        return Response(body, status_code=202, headers={"Idempotent-Replayed": "false"})
    replay = await _replayed(svc, published, data, due, now)
    return Response(replay, status_code=202, headers={"Idempotent-Replayed": "true"})


async def _replayed(
    svc: ApiServices, task_id: str, data: SubmitRequest, due: float, now: float
) -> SubmitResponse:
    """The answer for a repeated idempotency key: the first task, as it stands now."""
    sampler = svc.sampler
    found = await svc.status.read(svc.redis, task_id)
    if found is None:
        # Its status is not written yet (the first request is still finishing) or has expired.
        estimate = sampler.estimate(data.priority, due, now)
        return SubmitResponse(
            task_id=task_id,
            status="scheduled" if due > now else "queued",
            scheduled_for=None,
            estimated_completion=format_time(estimate) if estimate is not None else None,
        )
    if found.status in TERMINAL_STATES:
        estimated = found.completed_at
    else:
        estimate = sampler.estimate(found.priority or data.priority, due, now)
        estimated = format_time(estimate) if estimate is not None else None
    return SubmitResponse(
        task_id=task_id,
        status=found.status,  # type: ignore[arg-type]
        scheduled_for=found.scheduled_for,
        estimated_completion=estimated,
    )


@get(
    "/tasks/{task_id:str}/status",
    before_request=query_allowing(),
    summary="A task's status",
    description="Kept for COMPLETED_TTL_SECONDS after the task ends, then 404.",
    tags=["tasks"],
    responses={**_errors, 404: ResponseSpec(ErrorBody, description="Unknown or expired task")},
)
async def task_status(task_id: TaskId, state: State) -> TaskStatus:
    svc = services(state)
    found = await svc.status.read(svc.redis, task_id)
    if found is None:
        raise _not_found(task_id)
    return found


@post(
    "/tasks/{task_id:str}/cancel",
    before_request=query_allowing(),
    status_code=200,
    summary="Cancel a queued or scheduled task",
    description=(
        "The task will not run. Cancelling a cancelled task again answers 200; a running, "
        "retrying or finished task answers 409 with its state."
    ),
    tags=["tasks"],
    responses={
        **_errors,
        404: ResponseSpec(ErrorBody, description="Unknown or expired task"),
        409: ResponseSpec(CancelConflict, description="Too late: the task has started"),
    },
)
async def cancel_task(task_id: TaskId, state: State) -> Response[CancelResponse | CancelConflict]:
    svc = services(state)
    result = await svc.canceller.cancel(task_id)
    if result.state is None:
        raise _not_found(task_id)
    if not result.cancelled:
        return Response(
            CancelConflict(
                status_code=409,
                detail=result.refusal,
                task_id=task_id,
                status=result.state,  # type: ignore[arg-type]
            ),
            status_code=409,
        )
    return Response(CancelResponse(task_id=task_id, status="cancelled", cancelled=True))


@get(
    "/tasks/stats",
    before_request=query_allowing(),
    summary="Queue statistics, as `streamworker stats --json`",
    tags=["tasks"],
    responses=_errors,
)
async def queue_stats(state: State) -> QueueStats:
    svc = services(state)
    return await collect_stats(svc.redis, svc.keys, svc.settings.group)
