"""saq: ``saq settings`` with ``concurrency``; its defaults otherwise."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from saq import Queue

from bench.probe import probe

NAME = "saq"
DISTRIBUTION = "saq"
WORKLOADS = frozenset("ABCDE")
BATCH = False
#: Runs known not to finish: skipped with this note instead of waiting out the timeout.
SKIP = {
    "D256": "saq at concurrency 256 runs out of its default redis-py pool "
    "(MaxConnectionsError) and never finishes",
}

queue = Queue.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:1"))


async def bench_task(ctx: Any, *, payload: dict[str, Any]) -> None:
    probe.start(payload)
    if payload.get("s"):
        await anyio.sleep(payload["s"])
    probe.finish()


settings = {
    "queue": queue,
    "functions": [bench_task],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "32")),
}


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    return [python, "-m", "saq", "bench.peers.saq_peer.settings", "--quiet"], {}


class _Publisher:
    async def one(self, payload: dict[str, Any]) -> None:
        await queue.enqueue("bench_task", payload=payload)


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[_Publisher]:
    await queue.connect()
    try:
        yield _Publisher()
    finally:
        await queue.disconnect()
