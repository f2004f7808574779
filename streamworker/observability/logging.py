"""One JSON object per log line, with the seed's fields (CONTRACT.md §9).

Records carry structured fields through ``extra=``; the formatter copies the known ones and
anything else that is a plain value. Messages are event names, never payload text.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

from ..hooks import Outcome, TaskEnd
from ..wire import Rejected, Task

__all__ = ["JsonFormatter", "LoggingHook", "configure_logging"]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "background-tasks") -> None:
        super().__init__()
        self._service = service

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
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info and record.exc_info[0] is not None:
            # The class only: exception messages may carry patient data.
            doc["error_type"] = record.exc_info[0].__name__
        return _encoder.encode(doc).decode()


def configure_logging(level: str = "info", service: str = "background-tasks") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class LoggingHook:
    """task_started / task_completed / task_failed log lines from the life cycle."""

    def __init__(self, consumer: str) -> None:
        self._log = logging.getLogger("streamworker.task")
        self._consumer = consumer

    def before(self, task: Task, started_at: float, enqueued_at: float) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("task_started", extra=self._fields(task))

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        if end.outcome is Outcome.COMPLETED:
            if self._log.isEnabledFor(logging.INFO):
                extra = self._fields(task)
                extra["duration_ms"] = round(end.duration * 1000, 3)
                self._log.info("task_completed", extra=extra)
        elif end.outcome is Outcome.DEAD_LETTERED or end.outcome is Outcome.RETRYING:
            extra = self._fields(task)
            extra["duration_ms"] = round(end.duration * 1000, 3)
            extra["outcome"] = end.outcome.value
            extra["error_type"] = type(end.error).__name__ if end.error else None
            self._log.warning("task_failed", extra=extra)

    def rejected(self, rejected: Rejected, priority: str) -> None:
        pass  # the runner already logs task_dead_lettered

    def _fields(self, task: Task) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "task_id": task.task_id,
            "task_type": task.task_type,
            "retry_count": task.retry_count,
            "priority": task.priority,
            "consumer": self._consumer,
        }
        if task.correlation_id:
            fields["correlation_id"] = task.correlation_id
        return fields
