"""``file_cleanup``: delete old files strictly inside ``CLEANUP_ROOT``.

The requested path is resolved (``..`` and symlinks included) and must stay inside the root,
else the task fails permanently. The walk uses ``os.fwalk`` without following symlinks and
unlinks through the directory's file descriptor, so a directory swapped for a symlink during
the walk cannot redirect a deletion outside the root; symlinks themselves are left alone.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import anyio

from contracts import FileCleanup
from streamworker import PermanentError, TaskContext, handler


def _inside(root: Path, requested: str) -> Path:
    candidate = Path(requested)
    if not candidate.is_absolute():
        candidate = root / candidate
    target = candidate.resolve(strict=False)
    if not target.is_relative_to(root):
        raise PermanentError(
            "file_path is outside CLEANUP_ROOT (path traversal or a symlink out of it): refused"
        )
    return target


def _clean(target: Path, cutoff: float, dry_run: bool) -> dict[str, Any]:
    counts = {"deleted": 0, "bytes_freed": 0, "kept": 0, "symlinks_skipped": 0}

    def consider(name: str, st: os.stat_result, dir_fd: int | None) -> None:
        if stat.S_ISLNK(st.st_mode):
            counts["symlinks_skipped"] += 1
        elif not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
            counts["kept"] += 1
        else:
            if not dry_run:
                os.unlink(name, dir_fd=dir_fd)
            counts["deleted"] += 1
            counts["bytes_freed"] += st.st_size

    try:
        top = os.lstat(target)
    except FileNotFoundError:
        return counts
    if not stat.S_ISDIR(top.st_mode):
        parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            consider(target.name, top, parent_fd)
        finally:
            os.close(parent_fd)
        return counts
    for _dirpath, _dirs, files, dir_fd in os.fwalk(target, follow_symlinks=False):
        for name in files:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            consider(name, st, dir_fd)
    return counts


@handler("file_cleanup", contract=FileCleanup, timeout_seconds=600)
async def file_cleanup(payload: FileCleanup, ctx: TaskContext) -> dict[str, Any]:
    root = ctx.services.cleanup_root()
    target = _inside(root, payload.file_path)
    cutoff = time.time() - payload.max_age_hours * 3600
    counts = await anyio.to_thread.run_sync(lambda: _clean(target, cutoff, payload.dry_run))
    ctx.logger.info("files_cleaned", extra={**counts, "dry_run": payload.dry_run})
    return counts
