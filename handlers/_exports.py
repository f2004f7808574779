"""Streaming writers for exports and reports: rows go to disk one at a time while a SHA-256
is computed over exactly the bytes written; the manifest records it."""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

_json = msgspec.json.Encoder()

#: A CSV cell starting with one of these is run as a formula by spreadsheet programs;
#: prefixing a quote keeps it text (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def _finish(tmp: Path, path: Path, handle: io.BufferedWriter) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(tmp, path)


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def write_export(
    directory: Path,
    name: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    fmt: str,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    rows = list(rows)
    path = directory / f"{name}.{'csv' if fmt == 'csv' else 'jsonl'}"
    columns: list[str] = list(dict.fromkeys(k for row in rows for k in row))
    digest = hashlib.sha256()
    size = 0
    tmp = _atomic_target(path)
    handle = tmp.open("wb")
    try:

        def emit(chunk: bytes) -> None:
            nonlocal size
            handle.write(chunk)
            digest.update(chunk)
            size += len(chunk)

        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_csv_cell(row.get(c)) for c in columns])
                if buffer.tell() > 64 * 1024:
                    emit(buffer.getvalue().encode())
                    buffer.seek(0)
                    buffer.truncate()
            emit(buffer.getvalue().encode())
        else:
            for row in rows:
                emit(_json.encode(row) + b"\n")
        _finish(tmp, path, handle)
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise
    manifest = {
        **meta,
        "file": path.name,
        "format": fmt,
        "rows": len(rows),
        "columns": columns,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    write_json(directory / f"{name}.manifest.json", manifest)
    return manifest


def write_json(path: Path, document: Mapping[str, Any]) -> str:
    """Write ``document`` atomically; returns the SHA-256 of the bytes written."""
    data = msgspec.json.format(_json.encode(document), indent=2) + b"\n"
    tmp = _atomic_target(path)
    handle = tmp.open("wb")
    try:
        handle.write(data)
        _finish(tmp, path, handle)
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()
