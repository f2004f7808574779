"""Cancelling a task that has not started yet (CONTRACT.md §5, §7).

Only a ``queued`` or ``scheduled`` task can be cancelled. One Lua script checks the state and,
when allowed, marks the status ``cancelled`` (terminal: it expires after
``COMPLETED_TTL_SECONDS``) and sets the cancel marker the worker looks for before it starts an
entry. The entry itself stays where it is (the stream or the delayed set) and is skipped and
acknowledged by the worker when its turn comes: removing it from the middle of a stream or a
packed delayed-set member would need a scan.

Used by ``streamworker cancel`` and ``POST /api/v1/tasks/{task_id}/cancel``.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from .keyspace import Keyspace
from .wire import format_time, parse_time

__all__ = ["CancelOutcome", "CancelResult", "TaskCanceller"]


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"
    """Cancelled now: the task will not run."""
    ALREADY_CANCELLED = "already"
    """It had been cancelled before; nothing changed (a repeated cancel is not an error)."""
    CONFLICT = "conflict"
    """The task is running, retrying or finished: too late to cancel."""
    UNKNOWN = "unknown"
    """No status: never submitted, or expired after its retention."""


@dataclass(frozen=True, slots=True)
class CancelResult:
    task_id: str
    outcome: CancelOutcome
    state: str | None
    """The task's state after the call (None when unknown)."""

    @property
    def cancelled(self) -> bool:
        return self.outcome in (CancelOutcome.CANCELLED, CancelOutcome.ALREADY_CANCELLED)


_SOURCE = (resources.files(__package__) / "scripts" / "cancel_task.lua").read_text()


class TaskCanceller:
    def __init__(self, redis: aioredis.Redis, keys: Keyspace, retention_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._retention = retention_seconds
        # register_script sends EVALSHA and falls back to loading the script on NOSCRIPT (a
        # restarted Redis has forgotten it).
        self._script: Any = redis.register_script(_SOURCE)

    async def cancel(self, task_id: str) -> CancelResult:
        now = time.time()
        status_key = self._keys.status(task_id)
        # A task scheduled further out than the retention must keep its marker until it is
        # due, or it would run after all. scheduled_for never changes once published, so
        # reading it before the script is safe.
        scheduled = await self._redis.hget(status_key, "scheduled_for")
        marker_ttl = self._retention + max(0, math.ceil(_due(scheduled) - now))
        outcome, state = await self._script(
            keys=[status_key, self._keys.cancelled(task_id)],
            args=[self._retention, marker_ttl, format_time(now)],
        )
        result = CancelOutcome(_text(outcome))
        text = _text(state)
        return CancelResult(task_id, result, text or None)


def _due(scheduled: bytes | str | None) -> float:
    if not scheduled:
        return 0.0
    try:
        return parse_time(_text(scheduled))
    except ValueError:
        return 0.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
