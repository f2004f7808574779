"""taskiq with taskiq-redis's Redis Streams broker: ``taskiq worker --workers 1
--max-async-tasks N``. The group is created at id 0 (its default ``$`` would skip tasks
published before the worker started)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from taskiq_redis import RedisStreamBroker

from bench.probe import probe

NAME = "taskiq"
DISTRIBUTION = "taskiq"
WORKLOADS = frozenset("ABCDE")
BATCH = False

broker = RedisStreamBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:1"), consumer_id="0")


@broker.task(task_name="bench")
async def bench_task(payload: dict[str, Any]) -> None:
    probe.start(payload)
    if payload.get("s"):
        await anyio.sleep(payload["s"])
    probe.finish()


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    argv = [python, "-m", "taskiq", "worker", "bench.peers.taskiq_peer:broker"]
    return [*argv, "--workers", "1", "--max-async-tasks", str(concurrency)], {}


class _Publisher:
    async def one(self, payload: dict[str, Any]) -> None:
        await bench_task.kiq(payload)


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[_Publisher]:
    await broker.startup()
    try:
        yield _Publisher()
    finally:
        await broker.shutdown()
