"""The distributed rate limit: 100 SMS through two worker processes with SMS limited to
10/s across both. Counted on the receiving gateway's clock: all 100 arrive, each once, and no
1-second window holds more than the limit."""

from __future__ import annotations

import bisect
import uuid

import pytest
import redis.asyncio as aioredis

from streamworker import Producer, Settings
from streamworker.keyspace import Keyspace
from streamworker.resilience import RateLimiter
from tests.channel_servers import http_receiver
from tests.conftest import WorkerProcess, start_worker_process, wait_for

pytestmark = pytest.mark.anyio

LIMIT = 10


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


async def test_sms_rate_limit_holds_across_two_worker_processes(
    settings: Settings, redis: aioredis.Redis, worker_processes: list[WorkerProcess]
) -> None:
    total = 100
    with http_receiver() as gateway:
        env = {
            "STREAMWORKER_HANDLERS": "handlers",
            "SMS_GATEWAY_URL": f"{gateway.url}/sms",
            "RATE_LIMITS": f"sms={LIMIT}",
            "WORKER_COUNT": "10",
        }
        for _ in range(2):
            start_worker_process(settings, registry=worker_processes, **env)
        producer = Producer.from_settings(settings)
        ids = [
            await producer.publish("send_sms", {"to": "+4915112345678", "message": f"m{i}"})
            for i in range(total)
        ]
        await wait_for(lambda: len(gateway.on("/sms")) >= total, timeout=60, interval=0.2)
        await producer.aclose()
        for process in worker_processes:
            assert process.terminate() == 0, process.output()[-2000:]
        received = gateway.on("/sms")
    times = [r.at for r in received]
    references = [r.json()["reference"] for r in received]
    span = max(times) - min(times)
    peak = most_in_window(times, 1.0)
    print(f"\n{total} SMS at {LIMIT}/s over two processes: span {span:.2f}s, peak {peak}/1s")
    assert sorted(references) == sorted(f"{i}.sms" for i in ids)  # none lost, none twice
    assert peak <= LIMIT
    # A full window may go at once; after that each send waits for the oldest to leave the
    # window, so the last of 100 at 10/s ends at least 9 s after the first (a count, not a
    # timing: the sends cannot be faster than this however fast the machine is).
    assert span >= (total - LIMIT) / LIMIT * 0.95
    assert await redis.zcard(Keyspace(settings.prefix).family("normal").delayed) == 0


async def test_over_the_limit_callers_are_deferred_not_dropped(
    settings: Settings, redis: aioredis.Redis
) -> None:
    from streamworker import Defer

    key = Keyspace(settings.prefix).rate_limit(f"unit-{uuid.uuid4().hex[:6]}")
    limiter = RateLimiter(redis, key, "unit", 5, lease_seconds=5, max_wait_seconds=0.2)
    tokens: list[str] = []
    waits: list[float] = []
    for _ in range(8):
        try:
            tokens.append(await limiter.acquire())
        except Defer as exc:
            waits.append(exc.after)
    # 5 per second: five start, the other three are told to come back once a slot frees
    # (the five are still in flight: a second after they end at the soonest)
    assert len(tokens) == 5 and len(waits) == 3
    assert all(w >= 0.9 for w in waits)
    for token in tokens:
        await limiter.finish(token)
    with pytest.raises(Defer):  # ended just now: they still count for one second
        await limiter.acquire()
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(redis, key, "unit", 0)
