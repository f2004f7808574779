"""One JSON object per log line, with the seed's fields (CONTRACT.md §9).

Every line has ``timestamp``, ``level``, ``service``, ``event`` (the message: an event name,
never payload text) and ``consumer``. While a task runs, :class:`LoggingHook` puts the task's
fields (``task_id``, ``task_type``, ``retry_count``, ``priority``, ``correlation_id``) in a
context variable, so every line logged during the run — the runner's ``task_retrying`` and
``task_dead_lettered``, a handler's ``ctx.logger`` lines — carries them; when a span is current
(tracing on), ``trace_id`` and ``span_id`` are added too. Exceptions are reduced to their class
(``error_type``): messages and tracebacks may hold patient data.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextvars import ContextVar, Token
from typing import Any

import msgspec

from ..hooks import Outcome, TaskEnd
from ..wire import Rejected, Task

__all__ = ["JsonFormatter", "LoggingHook", "configure_logging"]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder()
# Module globals: an enum member read off its class costs ~1,000 instructions on Python 3.11.
_COMPLETED = Outcome.COMPLETED
_FAILED = (Outcome.DEAD_LETTERED, Outcome.RETRYING)

#: The task running in this asyncio task and the consumer running it (set by
#: LoggingHook.before); its log fields are only built when a line is actually written.
_running: ContextVar[tuple[Task, str] | None] = ContextVar("streamworker_running", default=None)


def _task_fields(task: Task, consumer: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "retry_count": task.retry_count,
        "priority": task.priority,
        "consumer": consumer,
    }
    if task.correlation_id:
        fields["correlation_id"] = task.correlation_id
    return fields


def _current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, when tracing is installed and a span is live."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # tracing never imported: nothing to look up
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "background-tasks", consumer: str | None = None) -> None:
        super().__init__()
        self._service = service
        self._consumer = consumer

    def format(self, record: logging.LogRecord) -> str:
        ts = record.created
        doc: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
            + f".{int(ts % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "event": record.getMessage(),
            "logger": record.name,
        }
        if self._consumer:
            doc["consumer"] = self._consumer
        running = _running.get()
        if running is not None:
            doc.update(_task_fields(*running))
        ids = _current_trace_ids()
        if ids is not None:
            doc["trace_id"], doc["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info and record.exc_info[0] is not None:
            # The class only: exception messages may carry patient data.
            doc["error_type"] = record.exc_info[0].__name__
        return _encoder.encode(doc).decode()


def configure_logging(
    level: str = "info", service: str = "background-tasks", consumer: str | None = None
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, consumer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class LoggingHook:
    """task_started / task_completed / task_failed lines from the life cycle. The runner
    itself logs the decisions
    (task_retrying, task_dead_lettered, task_deferred); this hook makes them carry the task's
    fields. ``task_failed`` is the attempt's result with its ``duration_ms``."""

    def __init__(self, consumer: str) -> None:
        self._log = logging.getLogger("streamworker.task")
        self._consumer = consumer
        #: The wait (task_started's wait_ms) is only written at debug level: at the level the
        #: worker starts with, the runner need not work it out for this hook.
        self.uses_enqueued_at = self._log.isEnabledFor(logging.DEBUG)

    def before(self, task: Task, started_at: float, enqueued_at: float) -> Token[Any]:
        token = _running.set((task, self._consumer))
        # debug, not info: a log line costs ~25 us of CPU, and at the default level one line
        # per task (task_completed) is the seed's record; task_started doubles it
        if self._log.isEnabledFor(logging.DEBUG):
            wait = started_at - enqueued_at  # NaN when debug was turned on after the start
            self._log.debug(
                "task_started",
                extra={} if math.isnan(wait) else {"wait_ms": round(max(0.0, wait) * 1000)},
            )
        return token

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        try:
            if end.outcome is _COMPLETED:
                if self._log.isEnabledFor(logging.INFO):
                    self._log.info(
                        "task_completed", extra={"duration_ms": round(end.duration * 1000, 3)}
                    )
            elif end.outcome in _FAILED:
                self._log.warning(
                    "task_failed",
                    extra={
                        "duration_ms": round(end.duration * 1000, 3),
                        "outcome": end.outcome.value,
                        "error_type": type(end.error).__name__ if end.error else None,
                    },
                )
        finally:
            if token is not None:
                _running.reset(token)

    def rejected(self, rejected: Rejected, priority: str) -> None:
        pass  # the runner already logs task_dead_lettered with the reason

    # No ``event``: the recoverer logs task_reclaimed (one line per entry) and the outage
    # tracker redis_unavailable / redis_reconnected themselves.
