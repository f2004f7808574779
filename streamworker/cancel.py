"""Cancelling a task that has not started yet (CONTRACT.md §5, §7).

Only a ``queued`` or ``scheduled`` task can be cancelled. One Lua script checks the state and,
when allowed, marks the status ``cancelled`` (terminal: it expires after
``COMPLETED_TTL_SECONDS``):

- a ``queued`` task on a single Redis: its status names its stream entry, which the script
  deletes if the consumer group has not read it yet; once read, the task has started and the
  cancel is refused. The worker reads without any further check.
- a ``scheduled`` task: the script also sets the cancel marker (kept until the task would
  have been due, plus the retention); the promoter drops the task instead of moving it to its
  stream (a packed delayed-set member cannot be found without a scan).
- on Redis Cluster, where the entry may live in another slot than the status, the status and
  the marker are what the worker's start gate checks before it runs a task.

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

    @property
    def refusal(self) -> str:
        """Why a conflict was refused, for the caller (API detail, CLI error)."""
        if self.state == "queued":
            # Its status does not say where its entry is (published by an earlier version).
            return (
                f"task {self.task_id} is queued, but where its entry is was not recorded: "
                "whether it has started cannot be told, so it is not cancelled"
            )
        return (
            f"task {self.task_id} is {self.state}: only queued or scheduled tasks can be cancelled"
        )


_SOURCE = (resources.files(__package__) / "scripts" / "cancel_task.lua").read_text()


class TaskCanceller:
    def __init__(
        self, redis: aioredis.Redis, keys: Keyspace, retention_seconds: int, *, group: str
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._retention = retention_seconds
        # The workers' consumer group: whether a queued task's entry has been read is asked
        # of it (single Redis; on a cluster the start gate decides).
        self._group = None if keys.cluster else group
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
        args: list[Any] = [self._retention, marker_ttl, format_time(now)]
        if self._group is not None:
            args.append(self._group)
        outcome, state = await self._script(
            keys=[status_key, self._keys.cancelled(task_id)], args=args
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
