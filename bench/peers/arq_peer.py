"""arq: ``arq WorkerSettings`` with ``max_jobs``; its defaults otherwise (results kept one
hour, 0.5 s poll delay when idle)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from arq import create_pool
from arq.connections import RedisSettings

from bench.probe import probe

NAME = "arq"
DISTRIBUTION = "arq"
WORKLOADS = frozenset("ABCDE")
BATCH = False


async def bench_task(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    probe.start(payload)
    if payload.get("s"):
        await anyio.sleep(payload["s"])
    probe.finish()


class WorkerSettings:
    functions = [bench_task]
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:1"))
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "32"))


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    return [python, "-m", "arq", "bench.peers.arq_peer.WorkerSettings"], {}


class _Publisher:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def one(self, payload: dict[str, Any]) -> None:
        await self._pool.enqueue_job("bench_task", payload)


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[_Publisher]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        yield _Publisher(pool)
    finally:
        await pool.aclose()
