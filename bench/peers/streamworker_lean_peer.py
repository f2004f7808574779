"""streamworker with its two optional per-task writes off: no status hashes
(``TRACK_STATUS=false``) and no audit events (``AUDIT_ENABLED=false``). Beside the default
row it shows what those features cost per task; the targets are judged on the default row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.peers import streamworker_peer

NAME = "streamworker_lean"
LABEL = "streamworker, statuses and audit off"
DISTRIBUTION = "streamworker"
WORKLOADS = frozenset("AB")
BATCH = True
_LEAN = {"TRACK_STATUS": "false", "AUDIT_ENABLED": "false"}


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    argv, env = streamworker_peer.worker_argv(python, concurrency)
    return argv, {**env, **_LEAN}


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[streamworker_peer.Publisher]:
    async with streamworker_peer.publisher(url, track_status=False) as publishing:
        yield publishing
