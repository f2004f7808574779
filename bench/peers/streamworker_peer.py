"""streamworker itself: the real ``streamworker worker`` command, WORKER_COUNT = concurrency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

NAME = "streamworker"
DISTRIBUTION = "streamworker"
WORKLOADS = frozenset("ABCDE")
BATCH = True


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    env = {
        "STREAMWORKER_HANDLERS": "bench.peers.streamworker_tasks",
        "WORKER_COUNT": str(concurrency),
        "LOG_LEVEL": "warning",
    }
    return [python, "-m", "streamworker", "worker"], env


class Publisher:
    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def one(self, payload: dict[str, Any]) -> None:
        await self._producer.publish("bench", payload)

    async def many(self, payloads: list[dict[str, Any]]) -> None:
        from streamworker import TaskSpec

        await self._producer.publish_many(
            [TaskSpec(task_type="bench", payload=p) for p in payloads]
        )


@asynccontextmanager
async def publisher(url: str, *, track_status: bool = True) -> AsyncIterator[Publisher]:
    from streamworker import Producer, Settings

    producer = Producer.from_settings(Settings(redis_url=url, track_status=track_status))
    try:
        yield Publisher(producer)
    finally:
        await producer.aclose()
