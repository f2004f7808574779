"""The consumer-side idempotency helper (``ctx.once``) on its own: done once, released when
the effect fails, never run by two attempts at the same time."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Defer, Producer, Registry, Settings, TaskContext
from streamworker.keyspace import Keyspace
from streamworker.resilience import SideEffects
from tests.conftest import running_worker, wait_for

pytestmark = pytest.mark.anyio


async def test_once_marks_done_releases_on_failure_and_defers_a_concurrent_attempt(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    effects = SideEffects(redis, keys, done_ttl_seconds=120, lease_seconds=5)
    task_id = str(uuid.uuid4())
    runs = 0

    async def failing_effect() -> None:
        async with effects.once("email", task_id) as first:
            assert first
            raise RuntimeError("smtp said no")

    with pytest.raises(RuntimeError):
        await failing_effect()
    assert await redis.exists(keys.done("email", task_id)) == 0  # released: try again

    async def effect() -> None:
        nonlocal runs
        async with effects.once("email", task_id) as first:
            if first:
                await anyio.sleep(0.2)
                runs += 1

    deferred: list[float] = []

    async def second_attempt() -> None:
        await anyio.sleep(0.05)
        try:
            await effect()
        except Defer as exc:
            deferred.append(exc.after)

    async with anyio.create_task_group() as tg:
        tg.start_soon(effect)
        tg.start_soon(second_attempt)
    assert runs == 1 and len(deferred) == 1 and 0 < deferred[0] <= 5
    assert await redis.get(keys.done("email", task_id)) == b"done"
    assert 0 < await redis.ttl(keys.done("email", task_id)) <= 120
    await effect()  # a redelivery later on
    assert runs == 1
    assert await effects.run_once("sms", task_id, lambda: anyio.sleep(0)) == (True, None)
    assert await effects.run_once("sms", task_id, lambda: anyio.sleep(0)) == (False, None)


async def test_ctx_once_in_a_handler_survives_a_retry(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = Registry()
    effects: list[str] = []
    attempts: list[int] = []

    @registry.handler("two_steps")
    async def two_steps(payload: dict[str, Any], ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        async with ctx.once("first_step") as first:
            if first:
                effects.append(ctx.task_id)
        if ctx.attempt == 1:
            raise RuntimeError("the second step fails once")

    producer = Producer.from_settings(settings)
    async with running_worker(settings, registry):
        await producer.publish("two_steps", {})
        await wait_for(lambda: len(attempts) == 2)
    await producer.aclose()
    assert len(effects) == 1  # the retry did not repeat the first step
