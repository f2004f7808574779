"""Runner: runs one delivered entry and settles its outcome.

decode the envelope -> find the handler -> decode the payload with its contract -> run it under
its timeout -> completed (batched ack), retry (atomic ack + park with backoff), or dead letter
(atomic move to ``failed_tasks``). Bad input never raises out of here: it is dead-lettered.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import anyio
import msgspec

from ..broker import Broker, StatusWrite
from ..context import Outbox, TaskContext
from ..errors import Defer, PermanentError, Retry, StreamworkerError
from ..hooks import Outcome, TaskEnd, TaskHooks, WorkerEvent
from ..registry import Registry, is_json_object
from ..settings import Settings
from ..wire import Delivery, Rejected, Task, decode_task, format_time
from .acker import Acker
from .backoff import backoff_delay
from .deadlines import Lane
from .retrying import until_done

log = logging.getLogger("streamworker.worker")

# An enum member read as a class attribute costs about 1,000 instructions on Python 3.11 (a
# descriptor), a module global a sixth of that: the completion's outcome is read once a task.
_COMPLETED = Outcome.COMPLETED


class TaskTimeout(StreamworkerError):
    """The handler ran longer than its timeout and was cancelled."""


def describe_error(exc: BaseException) -> str:
    """A short, payload-free description: the class, plus the message only for our own errors
    (whose messages we control). Handler exception messages may carry patient data."""
    name = type(exc).__name__
    if isinstance(exc, StreamworkerError) and str(exc):
        return f"{name}: {str(exc)[:200]}"
    return name


class Runner:
    def __init__(
        self,
        broker: Broker,
        registry: Registry,
        settings: Settings,
        acker: Acker,
        hooks: TaskHooks,
        outbox: Outbox,
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._settings = settings
        self._acker = acker
        self._hooks = hooks
        self._outbox = outbox
        self._consumer = settings.consumer
        self._status = broker.status.enabled
        self._has_hooks = bool(hooks)  # TaskHooks.__bool__ is a method call, once a task
        self._uses_enqueued_at = hooks.uses_enqueued_at
        self._max_deliveries = settings.max_deliveries
        self._max_payload_bytes = settings.max_payload_bytes
        self._default_timeout = settings.task_timeout_seconds
        self.deleted_acked = 0

    async def run(self, delivery: Delivery, lane: Lane) -> None:
        """Run ``delivery`` on ``lane`` (whose scope the watchdog cancels when the handler
        runs past its timeout; see deadlines.py)."""
        family = self._broker.families[delivery.family_index]
        if not delivery.fields:
            # Pending, but its stream entry was deleted: there is nothing to run.
            await until_done(lambda: self._broker.ack_deleted(delivery), what="ack_deleted")
            self.deleted_acked += 1
            log.warning("pending_entry_deleted", extra={"entry_id": delivery.entry_id.decode()})
            self._hooks.event(WorkerEvent.DELETED_PENDING, family.priority)
            return
        if delivery.cancelled:
            # Cancelled while queued or scheduled: the status already says so; just let go.
            await self._acker.discard(delivery.family_index, delivery.entry_id)
            self._hooks.event(WorkerEvent.CANCELLED, family.priority)
            log.info(
                "task_cancelled_skipped",
                extra={"task_id": (delivery.task_id_field or b"").decode(errors="replace")},
            )
            return
        if delivery.deliveries > self._max_deliveries:
            # The reaper's rule: delivered too often without an outcome (its workers died —
            # OOM, kill -9 — before any code could count a failure). Never run it again.
            await self._reap(delivery)
            return
        task = decode_task(  # positionally: keywords cost more, once a task
            delivery.fields,
            family.stream,
            delivery.entry_id,
            family.priority,
            self._max_payload_bytes,
        )
        if isinstance(task, Rejected):
            await self._reject(delivery, task)
            return
        spec = self._registry.get(task.task_type)
        if spec is None:
            await self._reject(
                delivery,
                Rejected(
                    "unknown_task_type",
                    "no handler for this task type",
                    task.task_id,
                    task.task_type,
                ),
            )
            return
        now = time.time()
        if task.scheduled_for is not None and task.scheduled_for > now + 0.001:
            await self._defer(delivery, task)
            return
        try:
            payload = spec.decode(task.payload)
        except msgspec.ValidationError as exc:
            reason = "contract_violation" if is_json_object(task.payload) else "malformed"
            message = str(exc) if reason == "contract_violation" else "payload is not a JSON object"
            await self._reject(delivery, Rejected(reason, message, task.task_id, task.task_type))
            return
        except msgspec.DecodeError:
            await self._reject(
                delivery,
                Rejected("malformed", "payload is not valid JSON", task.task_id, task.task_type),
            )
            return

        timeout = task.timeout_seconds or spec.timeout_seconds or self._default_timeout
        max_retries = task.max_retries
        if max_retries is None:
            max_retries = spec.max_retries
            if max_retries is None:
                max_retries = self._settings.max_retries
        ctx = TaskContext(  # positionally: a keyword call costs twice as much, once a task
            task.task_id,
            task.task_type,
            task.retry_count + 1,
            max_retries,
            task.priority,
            task.correlation_id,
            self._outbox,
        )
        if self._status and delivery.fields.get(b"task_id") is None:  # task_id_field, inline
            # A raw entry's derived id gets its status here, whole.
            self._acker.note_running(task, now)
        else:
            # Marked running once it has run for a while (leases.RunningStatus, which reads
            # this until the runner clears it; on a cluster by the start gate instead), and
            # completed with started_at.
            delivery.task = task
        tokens = None
        if self._has_hooks:
            enqueued_at = delivery.enqueued_at if self._uses_enqueued_at else math.nan
            tokens = self._hooks.before(task, now, enqueued_at)
        started = time.perf_counter()
        error: BaseException | None = None
        lane.arm(timeout)
        try:
            await spec.fn(payload, ctx)
        except Exception as exc:
            error = exc
        except anyio.get_cancelled_exc_class():
            if not lane.expired:
                raise  # not the timeout: the worker is stopping
            error = TaskTimeout(f"timed out after {timeout:g}s")
        finally:
            lane.disarm()
            # Before any outcome is queued: a "running" written after it would undo it.
            delivery.task = None
        duration = time.perf_counter() - started

        if error is None:
            if not self._acker.complete_nowait(delivery, task.task_id):
                # The acker is behind (Redis is not taking acks): wait for room. If the
                # handler timed out just as it returned, it counts as done (as with a per-task
                # scope), but the lane's scope is cancelled, so the wait must be shielded.
                with anyio.CancelScope(shield=lane.expired):
                    await self._acker.complete(delivery, task.task_id)
            end = TaskEnd(_COMPLETED, duration)
        elif isinstance(error, Defer):
            await self._defer(delivery, task, time.time() + error.after)
            log.info(
                "task_deferred",
                extra={
                    "task_id": task.task_id,
                    "task_type": task.task_type,
                    "retry_in_ms": round(error.after * 1000),
                    "reason": str(error)[:100],
                },
            )
            end = TaskEnd(Outcome.DEFERRED, duration, error, retry_in=error.after)
        elif isinstance(error, PermanentError):
            end = await self._fail(delivery, task, "permanent_failure", error, duration)
        elif task.retry_count >= max_retries:
            end = await self._fail(delivery, task, "max_retries_exceeded", error, duration)
        else:
            end = await self._retry(delivery, task, error, duration)
        if tokens is not None:
            self._hooks.after(task, tokens, end)

    # -- outcomes ---------------------------------------------------------------------------

    async def _retry(
        self, delivery: Delivery, task: Task, error: BaseException, duration: float
    ) -> TaskEnd:
        failures = task.retry_count + 1
        if isinstance(error, Retry):
            wait = error.after
        else:
            wait = backoff_delay(
                failures,
                base=self._settings.retry_base_seconds,
                cap=self._settings.retry_max_seconds,
                jitter=self._settings.retry_jitter,
            )
        due = time.time() + wait
        fields: dict[Any, Any] = dict(delivery.fields)
        fields[b"task_id"] = task.task_id
        fields[b"retry_count"] = str(failures)
        described = describe_error(error)
        write: StatusWrite = (
            task.task_id,
            "retrying",
            {"retry_count": failures, "last_error": described, "scheduled_for": format_time(due)},
        )
        with anyio.CancelScope(shield=True):
            await self._acker.run_in_order(
                lambda: self._broker.retry(
                    delivery, fields, int(due * 1000), write if self._status else None
                ),
                what="retry",
            )
        log.info(
            "task_retrying",
            extra={
                "task_id": task.task_id,
                "task_type": task.task_type,
                "retry_count": failures,
                "retry_in_ms": round(wait * 1000),
                "error_type": type(error).__name__,
            },
        )
        return TaskEnd(Outcome.RETRYING, duration, error, retry_in=wait)

    async def _fail(
        self, delivery: Delivery, task: Task, reason: str, error: BaseException, duration: float
    ) -> TaskEnd:
        await self._dead_letter(
            delivery, task.task_id, task.task_type, reason, describe_error(error)
        )
        return TaskEnd(Outcome.DEAD_LETTERED, duration, error, dead_letter_reason=reason)

    async def _reap(self, delivery: Delivery) -> None:
        family = self._broker.families[delivery.family_index]
        task = decode_task(
            delivery.fields,
            stream=family.stream,
            entry_id=delivery.entry_id,
            priority=family.priority,
            max_payload_bytes=self._settings.max_payload_bytes,
        )
        await self._dead_letter(
            delivery,
            task.task_id or "unknown",
            task.task_type,
            "max_deliveries_exceeded",
            f"delivered {delivery.deliveries} times without an outcome "
            f"(MAX_DELIVERIES={self._settings.max_deliveries})",
        )
        self._hooks.event(WorkerEvent.REAPED, family.priority)

    async def _reject(self, delivery: Delivery, rejected: Rejected) -> None:
        task_id = rejected.task_id or "unknown"
        await self._dead_letter(
            delivery, task_id, rejected.task_type, rejected.reason, rejected.error
        )
        if self._hooks:
            self._hooks.rejected(rejected, self._broker.families[delivery.family_index].priority)

    async def _dead_letter(
        self, delivery: Delivery, task_id: str, task_type: str | None, reason: str, error: str
    ) -> None:
        family = self._broker.families[delivery.family_index]
        now = time.time()
        fields: dict[Any, Any] = dict(delivery.fields)
        if b"task_id" not in fields and task_id != "unknown":
            fields[b"task_id"] = task_id
        fields.update(
            {
                "dlq_reason": reason,
                "dlq_error": error[:500],
                "source_stream": family.stream,
                "source_id": delivery.entry_id,
                "group": self._broker.group,
                "consumer": self._consumer,
                "failed_at": format_time(now),
            }
        )
        write: StatusWrite | None = None
        if self._status and task_id != "unknown":
            write = (
                task_id,
                "failed",
                {
                    "task_type": task_type,
                    "priority": family.priority,
                    "last_error": f"{reason}: {error[:200]}",
                    "completed_at": format_time(now),
                },
            )
        with anyio.CancelScope(shield=True):
            await self._acker.run_in_order(
                lambda: self._broker.dead_letter(delivery, fields, write), what="dead_letter"
            )
        log.warning(
            "task_dead_lettered",
            extra={"task_id": task_id, "task_type": task_type, "dlq_reason": reason},
        )

    async def _defer(self, delivery: Delivery, task: Task, due: float | None = None) -> None:
        """Park the entry until ``due`` (default: its own ``scheduled_for``, for a raw XADD
        that is not due yet), keeping its retry count."""
        if due is None:
            due = task.scheduled_for or 0.0
        fields: dict[Any, Any] = dict(delivery.fields)
        fields[b"task_id"] = task.task_id
        write: StatusWrite = (
            task.task_id,
            "scheduled",
            {
                "task_type": task.task_type,
                "priority": task.priority,
                "scheduled_for": format_time(due),
            },
        )
        with anyio.CancelScope(shield=True):
            await self._acker.run_in_order(
                lambda: self._broker.retry(
                    delivery,
                    fields,
                    int(due * 1000),
                    write if self._status else None,
                ),
                what="defer",
            )
