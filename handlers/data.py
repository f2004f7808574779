"""Data handlers: ``data_processing``, ``data_export`` and ``report_generation``.

File work runs in a worker thread (anyio.to_thread) so the event loop keeps serving the
other tasks; files are written under a temporary name and renamed into place, so a reader
never sees half a file and a redelivered task simply replaces what it wrote before.
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

import anyio
import msgspec

from contracts import DataExport, DataProcessing, ReportGeneration
from streamworker import PermanentError, TaskContext, handler

from ._exports import write_export, write_json


@handler("data_processing", contract=DataProcessing, timeout_seconds=120)
async def data_processing(payload: DataProcessing, ctx: TaskContext) -> float:
    numbers = payload.numbers or payload.data  # "data" is the seed's name for the list
    if not numbers:
        raise PermanentError("numbers (or data) must hold at least one number")
    if not all(math.isfinite(n) for n in numbers):
        raise PermanentError("numbers must be finite")
    if payload.operation == "sum":
        result = math.fsum(numbers)
    elif payload.operation == "average":
        result = math.fsum(numbers) / len(numbers)
    elif payload.operation == "min":
        result = min(numbers)
    else:
        result = max(numbers)
    ctx.logger.debug(
        "data_processed", extra={"count": len(numbers), "operation": payload.operation}
    )
    return result


@handler("data_export", contract=DataExport, timeout_seconds=300)
async def data_export(payload: DataExport, ctx: TaskContext) -> dict[str, Any]:
    services = ctx.services
    directory = services.export_dir()
    if payload.dataset == "queue_stats":
        stats = await services.task_stats()
        rows: list[dict[str, Any]] = [
            {k: v for k, v in msgspec.to_builtins(p).items() if k != "stream"}
            for p in stats.priorities
        ]
    else:
        rows = list(payload.rows)
    name = payload.export_name or f"export-{ctx.task_id}"
    manifest = await anyio.to_thread.run_sync(
        lambda: write_export(
            directory,
            name,
            rows,
            fmt=payload.format,
            meta={"task_id": ctx.task_id, "dataset": payload.dataset},
        )
    )
    ctx.logger.info(
        "data_exported",
        extra={"rows": manifest["rows"], "bytes": manifest["bytes"], "format": payload.format},
    )
    return manifest


def _day_ms(day: datetime.date, *, end: bool) -> int:
    start = datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)
    if end:
        start += datetime.timedelta(days=1)
    return int(start.timestamp() * 1000) - (1 if end else 0)


@handler("report_generation", contract=ReportGeneration, timeout_seconds=300)
async def report_generation(payload: ReportGeneration, ctx: TaskContext) -> dict[str, Any]:
    if payload.start_date and payload.end_date and payload.start_date > payload.end_date:
        raise PermanentError("start_date is after end_date")
    services = ctx.services
    directory = services.export_dir()
    stats = await services.task_stats()
    start_ms = _day_ms(payload.start_date, end=False) if payload.start_date else None
    end_ms = _day_ms(payload.end_date, end=True) if payload.end_date else None
    dead = await services.dead_letter_counts(start_ms, end_ms)
    report: dict[str, Any] = {
        "report_type": payload.report_type,
        "generated_at": datetime.datetime.fromtimestamp(time.time(), datetime.UTC).isoformat(),
        "task_id": ctx.task_id,
        "period": {
            "start_date": payload.start_date.isoformat() if payload.start_date else None,
            "end_date": payload.end_date.isoformat() if payload.end_date else None,
        },
        "queues": {
            p.priority: {
                "backlog": p.backlog,
                "pending": p.pending,
                "delayed": p.delayed,
                "consumers": p.consumers,
                "oldest_pending_age_seconds": p.oldest_pending_age_seconds,
            }
            for p in stats.priorities
        },
        "backlog_total": stats.backlog,
        "delayed_total": stats.delayed,
        "dead_letters": dead,
    }
    path = directory / "reports" / f"{payload.report_type}-{ctx.task_id}.json"
    checksum = await anyio.to_thread.run_sync(lambda: write_json(path, report))
    ctx.logger.info("report_generated", extra={"report_type": payload.report_type})
    return {"path": str(path), "sha256": checksum}
