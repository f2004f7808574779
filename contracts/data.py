"""Data task contracts."""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import msgspec

Scalar = str | int | float | bool | None
ExportName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class DataProcessing(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregate a list of numbers: ``{"numbers": [1, 2, 3], "operation": "average"}``; the
    seed's ``{"operation": "sum", "data": [...]}`` is accepted too."""

    numbers: Annotated[list[float], msgspec.Meta(max_length=1_000_000)] = msgspec.field(
        default_factory=list
    )
    operation: Literal["sum", "average", "min", "max"] = "sum"
    dataset_ref: str | None = None
    data: Annotated[list[float], msgspec.Meta(max_length=1_000_000)] = msgspec.field(
        default_factory=list
    )


class DataExport(msgspec.Struct, frozen=True, kw_only=True):
    """Write a dataset to ``EXPORT_DIR`` as CSV or JSON lines, with a manifest (row count,
    size, SHA-256). ``dataset="inline"`` exports ``rows``; ``"queue_stats"`` the live queue
    statistics per priority."""

    dataset: Literal["inline", "queue_stats"] = "inline"
    rows: Annotated[list[dict[str, Scalar]], msgspec.Meta(max_length=100_000)] = msgspec.field(
        default_factory=list
    )
    format: Literal["csv", "jsonl"] = "jsonl"
    export_name: ExportName | None = None


class ReportGeneration(msgspec.Struct, frozen=True, kw_only=True):
    """An aggregate report written to ``EXPORT_DIR/reports``: ``task_summary`` counts the
    queue backlog per priority and the dead letters by reason and task type, within
    ``start_date``..``end_date`` (dates of failure, inclusive) when given."""

    report_type: Literal["task_summary"] = "task_summary"
    start_date: datetime.date | None = None
    end_date: datetime.date | None = None
