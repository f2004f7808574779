"""File task contracts."""

from __future__ import annotations

from typing import Annotated

import msgspec


class FileCleanup(msgspec.Struct, frozen=True, kw_only=True):
    """Delete files older than ``max_age_hours`` under ``file_path``, which must lie inside
    ``CLEANUP_ROOT`` (relative paths are taken from there): ``{"file_path": "uploads",
    "max_age_hours": 24}``."""

    file_path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    max_age_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 3650)]
    dry_run: bool = False
