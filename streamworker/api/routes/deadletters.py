"""``/api/v1/dead-letters``: list and replay, over the same service as ``streamworker dlq``.

There is no HTTP route that returns a dead letter's payload (``dlq show`` does, on the
operator's own terminal): payloads may hold patient data and have no business on the wire
to other services.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, QueryParameter

from ...deadletters import DeadLetterPage, InvalidDeadLetterId, ReplaySummary
from ..models import ErrorBody
from ..services import services
from .checks import all_of, json_body, query_allowing

__all__ = ["ReplayRequest", "list_dead_letters", "replay_dead_letters"]

Reason = Literal[
    "max_retries_exceeded",
    "max_deliveries_exceeded",
    "malformed",
    "too_large",
    "unknown_task_type",
    "contract_violation",
    "permanent_failure",
]
EntryId = Annotated[str, msgspec.Meta(pattern=r"^\d{1,20}-\d{1,20}$", examples=["1700000000000-0"])]

_errors = {
    400: ResponseSpec(ErrorBody, description="Invalid filter or id"),
    401: ResponseSpec(ErrorBody, description="Missing or invalid bearer token"),
    503: ResponseSpec(ErrorBody, description="Redis unavailable; see Retry-After"),
}


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Exactly one selection: ``ids``, or ``task_type`` and/or ``reason``, or ``all``."""

    ids: Annotated[list[EntryId], msgspec.Meta(min_length=1, max_length=10000)] | None = None
    task_type: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    reason: Reason | None = None
    all: bool = False
    dry_run: bool = False
    rate_per_second: Annotated[float, msgspec.Meta(gt=0, le=100000)] | None = None


@get(
    "/dead-letters",
    before_request=query_allowing("task_type", "reason", "limit", "after"),
    summary="Dead letters, newest first (never their payloads), as `streamworker dlq list`",
    description="Pages by cursor: pass a page's next_cursor as `after` for the next one.",
    tags=["dead letters"],
    responses=_errors,
)
async def list_dead_letters(
    state: State,
    task_type: Annotated[str | None, QueryParameter(min_length=1, max_length=200)] = None,
    reason: Annotated[Reason | None, QueryParameter()] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    after: Annotated[
        str | None,
        QueryParameter(pattern=r"^\d{1,20}-\d{1,20}$", description="next_cursor of a page"),
    ] = None,
) -> DeadLetterPage:
    svc = services(state)
    try:
        return await svc.dead_letters.list(
            task_type=task_type, reason=reason, limit=limit, after=after
        )
    except InvalidDeadLetterId as exc:
        raise ClientException(str(exc)) from None


@post(
    "/dead-letters/replay",
    status_code=200,
    before_request=all_of(query_allowing(), json_body),
    summary="Replay dead letters, as `streamworker dlq replay`",
    description=(
        "Puts each chosen entry back on its source stream with retry_count 0 and "
        "replayed_from set, and removes the dead letter, atomically per entry. "
        "dry_run counts and checks without changing anything."
    ),
    tags=["dead letters"],
    responses={**_errors, 415: ResponseSpec(ErrorBody, description="Body is not JSON")},
)
async def replay_dead_letters(data: JSONBody[ReplayRequest], state: State) -> ReplaySummary:
    svc = services(state)
    try:
        return await svc.dead_letters.replay(
            ids=data.ids,
            task_type=data.task_type,
            reason=data.reason,
            all=data.all,
            dry_run=data.dry_run,
            rate_per_second=data.rate_per_second,
        )
    except ValueError as exc:  # InvalidDeadLetterId is one; so is a missing selection
        raise ClientException(str(exc)) from None
