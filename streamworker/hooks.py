"""Life-cycle hooks: where logging, metrics, tracing and audit plug into the task life cycle.

A hook sees a task start and end; it never changes the outcome. The runner calls
``before`` and ``after`` in the same asyncio task as the handler, so a hook may set context
(e.g. make a span current) in ``before`` and restore it in ``after``. Hooks must be cheap and
must not raise: an exception from a hook is logged and otherwise ignored.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import MutableMapping, Sequence
from typing import Any, Protocol

import msgspec

from .wire import Rejected, Task

__all__ = ["Outcome", "ProducerHook", "TaskEnd", "TaskHook", "TaskHooks", "WorkerEvent"]

log = logging.getLogger("streamworker.hooks")


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    RETRYING = "retrying"
    DEAD_LETTERED = "dead_lettered"
    DEFERRED = "deferred"  # not due yet (scheduled_for in the future): parked, not an attempt
    CANCELLED = "cancelled"


class TaskEnd(msgspec.Struct):
    """How one run of a task ended. (A Struct: made once a task, and its constructor runs
    in C, where a class's ``__init__`` cost several times as much.)"""

    outcome: Outcome
    duration: float
    error: BaseException | None = None
    dead_letter_reason: str | None = None
    retry_in: float | None = None


class TaskHook(Protocol):
    def before(self, task: Task, started_at: float, enqueued_at: float) -> Any:
        """Called just before the handler runs; the return value is passed to ``after``."""

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        """Called once the outcome is decided: retries and dead letters are already written;
        a completion's ack may still be waiting in the acker's next batch."""

    def rejected(self, rejected: Rejected, priority: str) -> None:
        """Called when an entry is dead-lettered before any handler ran (bad input)."""

    # Optional: a hook that defines ``event(self, event: WorkerEvent, priority: str | None,
    # count: int) -> None`` also receives worker-level events (see ``TaskHooks.event``).
    # Optional: ``uses_enqueued_at = False`` says ``before`` ignores ``enqueued_at``; when no
    # hook uses it, the runner passes NaN instead of working it out from the entry id (2,500
    # instructions a task: parsing the id's milliseconds).


class WorkerEvent(enum.StrEnum):
    """Worker-level happenings that are not one task's run (for metrics and logs)."""

    RECLAIMED = "reclaimed"  # entries taken over from a stale consumer (XAUTOCLAIM)
    LEASE_RENEWED = "lease_renewed"  # a running task's idle time reset
    REAPED = "reaped"  # entries over MAX_DELIVERIES moved to the dead-letter stream
    DELETED_PENDING = "deleted_pending"  # pending entries whose stream entry was gone
    CANCELLED = "cancelled"  # entries skipped because their task was cancelled
    CONSUMER_REMOVED = "consumer_removed"  # idle consumers with nothing pending deleted
    REDIS_ERROR = "redis_error"  # a Redis call failed (and will be retried)
    REDIS_RECONNECTED = "redis_reconnected"  # Redis answered again after errors


class ProducerHook(Protocol):
    def before_publish(self, task_type: str, stream: str, fields: MutableMapping[str, Any]) -> Any:
        """May add fields (e.g. traceparent) to an entry about to be written."""

    def after_publish(self, token: Any, task_id: str, error: BaseException | None) -> None: ...


def _owner(method: Any) -> str:
    """The class name of the hook a bound method belongs to (for the hook_failed line)."""
    return type(getattr(method, "__self__", method)).__name__


class TaskHooks:
    """Calls every hook in order, isolating the task from a hook's failure."""

    __slots__ = ("_afters", "_befores", "_hooks", "uses_enqueued_at")

    def __init__(self, hooks: Sequence[TaskHook] = ()) -> None:
        self._hooks = tuple(hooks)
        #: Whether any hook reads ``before``'s ``enqueued_at`` (a hook says it does not with
        #: ``uses_enqueued_at = False``).
        self.uses_enqueued_at = any(getattr(h, "uses_enqueued_at", True) for h in self._hooks)
        # Bound once: these two run for every task.
        self._befores = tuple(hook.before for hook in self._hooks)
        self._afters = tuple(hook.after for hook in reversed(self._hooks))

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def before(self, task: Task, started_at: float, enqueued_at: float) -> list[Any]:
        tokens = []
        for before in self._befores:
            try:
                tokens.append(before(task, started_at, enqueued_at))
            except Exception:
                log.exception("hook_failed", extra={"hook": _owner(before)})
                tokens.append(None)
        return tokens

    def after(self, task: Task, tokens: list[Any], end: TaskEnd) -> None:
        # Reverse order: the hook that set context first restores it last.
        i = len(tokens)
        for after in self._afters:
            i -= 1
            try:
                after(task, tokens[i], end)
            except Exception:
                log.exception("hook_failed", extra={"hook": _owner(after)})

    def event(self, event: WorkerEvent, priority: str | None = None, count: int = 1) -> None:
        for hook in self._hooks:
            handle = getattr(hook, "event", None)
            if handle is None:
                continue
            try:
                handle(event, priority, count)
            except Exception:
                log.exception("hook_failed", extra={"hook": type(hook).__name__})

    def rejected(self, rejected: Rejected, priority: str) -> None:
        for hook in self._hooks:
            try:
                hook.rejected(rejected, priority)
            except Exception:
                log.exception("hook_failed", extra={"hook": type(hook).__name__})
