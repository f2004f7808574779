"""Handlers for subprocess tests (imported by ``STREAMWORKER_HANDLERS=tests.sample_handlers``).

They record what ran in Redis itself, under the worker's prefix, so the test can count runs
across processes.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import redis.asyncio as aioredis

from streamworker import TaskContext, handler
from streamworker.broker import connect

_client: aioredis.Redis | None = None


def _redis() -> aioredis.Redis:
    global _client
    if _client is None:
        cluster = os.environ.get("REDIS_CLUSTER", "").lower() in {"1", "true", "yes", "on"}
        _client = connect(os.environ["REDIS_URL"], cluster=cluster)
    return _client


def _key(name: str) -> str:
    return f"{os.environ.get('STREAMWORKER_PREFIX', '')}test:{name}"


@handler("record")
async def record(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Sleep ``sleep`` seconds, then count the run and remember the task id."""
    if payload.get("sleep"):
        await _redis().sadd(_key("started"), ctx.task_id)
        await anyio.sleep(float(payload["sleep"]))
    pipe = _redis().pipeline(transaction=False)
    pipe.sadd(_key("done"), ctx.task_id)
    pipe.incr(_key("runs"))
    await pipe.execute()


@handler("sequence")
async def sequence(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Append ``seq`` to the list ``order``: the order in which tasks ran."""
    await _redis().rpush(_key("order"), int(payload["seq"]))


@handler("noop")
async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
    return None


@handler("crash")
async def crash(payload: dict[str, Any], ctx: TaskContext) -> None:
    """The poison message: kills its worker process before anything can be recorded."""
    os._exit(137)
