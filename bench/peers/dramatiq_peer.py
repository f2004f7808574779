"""dramatiq with its Redis broker: ``dramatiq --processes 1 --threads N`` (threads, not
coroutines: the sleep is ``time.sleep``). Its client is synchronous, so "single" publishing
is sequential for it."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.probe import probe

NAME = "dramatiq"
DISTRIBUTION = "dramatiq"
WORKLOADS = frozenset("ABCDE")
BATCH = False

broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:1"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench", max_retries=0)
def bench_task(payload: dict[str, Any]) -> None:
    probe.start(payload)
    if payload.get("s"):
        time.sleep(payload["s"])
    probe.finish()


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    argv = [python, "-m", "dramatiq", "bench.peers.dramatiq_peer"]
    return [*argv, "--processes", "1", "--threads", str(concurrency)], {}


class _Publisher:
    async def one(self, payload: dict[str, Any]) -> None:
        bench_task.send(payload)


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[_Publisher]:
    yield _Publisher()
