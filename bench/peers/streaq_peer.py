"""streaq: ``python -m streaq run`` with ``concurrency``; pickle serializer (its default)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from streaq import Worker

from bench.probe import probe

NAME = "streaq"
DISTRIBUTION = "streaq"
WORKLOADS = frozenset("ABCDE")
BATCH = True

worker = Worker(
    redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:1"),
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "32")),
)


@worker.task()
async def bench_task(payload: dict[str, Any]) -> None:
    probe.start(payload)
    if payload.get("s"):
        await anyio.sleep(payload["s"])
    probe.finish()


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    return [python, "-m", "streaq", "run", "bench.peers.streaq_peer:worker"], {}


class _Publisher:
    async def one(self, payload: dict[str, Any]) -> None:
        await bench_task.enqueue(payload)

    async def many(self, payloads: list[dict[str, Any]]) -> None:
        await worker.enqueue_many([bench_task.enqueue(p) for p in payloads])


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[_Publisher]:
    async with worker:
        yield _Publisher()
