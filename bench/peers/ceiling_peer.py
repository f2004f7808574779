"""The practical limit of a Python consumer: bare redis-py (hiredis parser), XREADGROUP COUNT
100, then one pipeline with a multi-id XACK and XDEL for the batch. No retries, no status, no
timeouts, one task at a time: a floor for the per-task cost, not a task system."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis

from bench.probe import probe

NAME = "ceiling"
DISTRIBUTION = "redis"
WORKLOADS = frozenset("ABCE")
BATCH = True
STREAM = "ceiling"
GROUP = "ceiling"


def worker_argv(python: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    return [python, "-m", "bench.peers.ceiling_peer"], {}


class _Publisher:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def one(self, payload: dict[str, Any]) -> None:
        await self._client.xadd(STREAM, {"payload": msgspec.json.encode(payload)})

    async def many(self, payloads: list[dict[str, Any]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for p in payloads:
            pipe.xadd(STREAM, {"payload": msgspec.json.encode(p)})
        await pipe.execute()


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[_Publisher]:
    client = aioredis.Redis.from_url(url)
    try:
        yield _Publisher(client)
    finally:
        await client.aclose()


def consume() -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists already
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    decode = msgspec.json.Decoder().decode
    while True:
        reply = client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=100, block=1000)
        if not reply:
            continue
        ids = []
        for entry_id, fields in reply[0][1]:
            payload = decode(fields[b"payload"])
            probe.start(payload)
            probe.finish()
            ids.append(entry_id)
        pipe = client.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        pipe.execute()


if __name__ == "__main__":
    consume()
