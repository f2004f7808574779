"""Handler timeouts through the lanes' shared cancel scopes and the watchdog (deadlines.py):
a handler past its timeout is cancelled and counted as a failed attempt, the lane it ran on goes
on running later tasks normally, a handler's own cancel scopes keep working, and a stop is never
mistaken for a timeout."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Producer, Registry, Settings, TaskContext
from streamworker.worker.deadlines import Watchdog
from tests.conftest import dead_letters, running_worker, status_is, wait_for

pytestmark = pytest.mark.anyio


async def test_the_watchdog_cancels_only_lanes_past_their_deadline() -> None:
    watchdog = Watchdog()
    outcomes: dict[str, str] = {}

    async def lane_run(name: str, timeout: float, sleep: float) -> None:
        lane = watchdog.lane()
        with lane.scope:
            lane.arm(timeout)
            try:
                await anyio.sleep(sleep)
                outcomes[name] = "finished"
            except anyio.get_cancelled_exc_class():
                outcomes[name] = "timed out" if lane.expired else "stopped"
                if not lane.expired:
                    raise
            finally:
                lane.disarm()

    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        async with anyio.create_task_group() as lanes:
            lanes.start_soon(lane_run, "slow", 0.05, 30)
            lanes.start_soon(lane_run, "fast", 30, 0)
            lanes.start_soon(lane_run, "unlimited", math.inf, 0.1)
        tg.cancel_scope.cancel()
    assert outcomes == {"slow": "timed out", "fast": "finished", "unlimited": "finished"}
    assert watchdog.expired == 1


async def test_a_lane_goes_on_after_a_timeout_and_handlers_keep_their_own_scopes(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = Registry()
    done: list[str] = []

    @registry.handler("slow", timeout_seconds=0.1, max_retries=0)
    async def slow(payload: dict[str, Any], ctx: TaskContext) -> None:
        await anyio.sleep(30)

    @registry.handler("scoped", timeout_seconds=5)
    async def scoped(payload: dict[str, Any], ctx: TaskContext) -> None:
        with anyio.move_on_after(0.01):  # the handler's own scope: not a task timeout
            await anyio.sleep(30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0)
        done.append(payload["n"])

    # One lane: the task after the timed-out one runs in the lane's fresh scope.
    settings = settings.with_overrides(worker_count=1)
    producer = Producer.from_settings(settings)
    slow_id = await producer.publish("slow", {})
    ids = [await producer.publish("scoped", {"n": str(n)}) for n in range(3)]
    async with running_worker(settings, registry) as worker:
        await wait_for(lambda: status_is(redis, settings, slow_id, "failed"))
        for task_id in ids:
            await wait_for(lambda task_id=task_id: status_is(redis, settings, task_id, "completed"))
        assert worker.watchdog.expired == 1
    assert done == ["0", "1", "2"]
    [entry] = await dead_letters(redis, settings)
    assert "timed out after 0.1s" in entry["dlq_error"]
    await producer.aclose()


async def test_a_stop_is_not_counted_as_a_timeout(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = Registry()
    started = anyio.Event()

    @registry.handler("long", timeout_seconds=30)
    async def long(payload: dict[str, Any], ctx: TaskContext) -> None:
        started.set()
        await anyio.sleep(30)

    settings = settings.with_overrides(shutdown_grace_seconds=0.1)
    producer = Producer.from_settings(settings)
    task_id = await producer.publish("long", {})
    async with running_worker(settings, registry) as worker:
        await started.wait()
        # 'running' once it has run for a while (leases.RUNNING_AFTER_SECONDS)
        await wait_for(lambda: status_is(redis, settings, task_id, "running"))
    # Cut off by the shutdown grace: left pending and 'running' for the next consumer, not
    # retried or dead-lettered as a timeout.
    assert worker.watchdog.expired == 0
    assert await status_is(redis, settings, task_id, "running")
    assert await dead_letters(redis, settings) == []
    await producer.aclose()
