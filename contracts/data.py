"""Data task contracts."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class DataProcessing(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregate a list of numbers: ``{"numbers": [1, 2, 3], "operation": "average"}``."""

    numbers: Annotated[list[float], msgspec.Meta(min_length=1, max_length=1_000_000)]
    operation: Literal["sum", "average", "min", "max"] = "sum"
    dataset_ref: str | None = None
