"""The circuit breaker's state machine against the real redis-server, shared by two
"replicas" (two breaker objects on two connections, as two worker processes would have)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Defer, Settings
from streamworker.broker import connect
from streamworker.keyspace import Keyspace
from streamworker.resilience import BreakerPolicy, CircuitBreaker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def other_redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect(settings.require_redis_url())
    try:
        yield client
    finally:
        await client.aclose()


def pair(
    redis: aioredis.Redis, other: aioredis.Redis, settings: Settings, policy: BreakerPolicy
) -> tuple[CircuitBreaker, CircuitBreaker]:
    key = Keyspace(settings.prefix).breaker(f"smtp-{uuid.uuid4().hex[:6]}")
    return CircuitBreaker(redis, key, "email", policy), CircuitBreaker(other, key, "email", policy)


async def test_consecutive_failures_open_it_for_every_replica(
    settings: Settings, redis: aioredis.Redis, other_redis: aioredis.Redis
) -> None:
    policy = BreakerPolicy(failure_threshold=3, cooldown_seconds=0.3, probe_seconds=5)
    a, b = pair(redis, other_redis, settings, policy)
    await a.record_failure()
    await b.record_failure()
    await a.record_success()  # a success resets the consecutive count
    await a.record_failure()
    await b.record_failure()
    assert await a.state() == "closed"
    await a.acquire()
    await b.record_failure()  # the third in a row, seen by replica b
    assert await a.state() == "open"
    with pytest.raises(Defer) as deferred:
        await a.acquire()  # replica a stops calling too
    assert 0 < deferred.value.after <= 0.3 + 0.3
    await anyio.sleep(0.35)
    # cool-down over: exactly one probe goes through, the other replica keeps waiting
    verdicts = [await a.check(), await b.check()]
    assert [v.allowed for v in verdicts] == [True, False]
    assert verdicts[0].state == "half_open"
    await a.record_failure()  # the probe failed: open again for another cool-down
    assert await b.state() == "open"
    await anyio.sleep(0.35)
    assert (await b.check()).allowed
    await b.record_success()  # the probe succeeded: closed for everyone
    assert await a.state() == "closed"
    await a.acquire()


async def test_a_failure_ratio_opens_it(
    settings: Settings, redis: aioredis.Redis, other_redis: aioredis.Redis
) -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, min_calls=10)
    a, _ = pair(redis, other_redis, settings, policy)
    for _ in range(4):  # alternating: never 100 in a row, but half of the calls fail
        await a.record_success()
        await a.record_failure()
    assert await a.state() == "closed"  # 8 calls: below min_calls
    await a.record_success()
    await a.record_failure()  # 10 calls, 5 failed
    assert await a.state() == "open"


async def test_a_probe_that_never_reports_back_is_replaced(
    settings: Settings, redis: aioredis.Redis, other_redis: aioredis.Redis
) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_seconds=0.1, probe_seconds=0.2)
    a, b = pair(redis, other_redis, settings, policy)
    await a.record_failure()
    await anyio.sleep(0.15)
    assert (await a.check()).allowed  # a takes the probe... and its worker dies
    assert not (await b.check()).allowed
    await anyio.sleep(0.25)
    assert (await b.check()).allowed  # the probe lease ran out: b probes instead
