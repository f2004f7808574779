"""Redis goes away and comes back (CONTRACT.md §3, issue 4 "Redis outages").

Each test has its own redis-server (AOF on) that it kills with SIGKILL and starts again on the
same port. Workers and producers must get a clear error while it is down, reconnect with
backoff, not crash and not spin, and lose nothing that Redis had acknowledged.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from streamworker import Producer, Registry, Settings, TaskContext
from streamworker.broker import connect
from streamworker.embedded import EmbeddedRedis
from streamworker.keyspace import PRIORITIES, Keyspace
from streamworker.producer import SyncProducer, TaskSpec
from tests.conftest import WorkerProcess, running_worker, start_worker_process, wait_for

pytestmark = pytest.mark.anyio


async def _settled(redis: aioredis.Redis, keys: Keyspace, group: str) -> bool:
    """Nothing left in any stream, pending list or delayed set."""
    try:
        for priority in PRIORITIES:
            family = keys.family(priority)
            if await redis.xlen(family.stream) or await redis.zcard(family.delayed):
                return False
            if (await redis.xpending(family.stream, group))["pending"]:
                return False
    except RedisConnectionError:
        return False
    return True


async def _publish_fails_clearly(producer: Producer) -> str:
    with pytest.raises(RedisConnectionError) as caught:
        await producer.publish("noop", {})
    return str(caught.value)


async def test_in_process_worker_rides_out_a_redis_restart(
    settings: Settings, private_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that finishes while Redis is down is acknowledged once it is back; tasks
    published before and after the outage all complete; the worker never crashes and logs
    no traceback."""
    caplog.set_level(logging.INFO)
    settings = settings.with_overrides(redis_url=private_redis.url)
    keys = Keyspace(settings.prefix)
    done: list[str] = []
    started: list[str] = []
    release = anyio.Event()
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
        done.append(ctx.task_id)

    @registry.handler("held")
    async def held(payload: dict[str, Any], ctx: TaskContext) -> None:
        started.append(ctx.task_id)
        await release.wait()
        done.append(ctx.task_id)

    redis = connect(private_redis.url)
    producer = Producer.from_settings(settings)
    before = await producer.publish_many([TaskSpec(task_type="noop", payload={})] * 50)
    in_flight = await producer.publish_many([TaskSpec(task_type="held", payload={})] * 3)
    async with running_worker(settings, registry) as worker:
        await wait_for(lambda: len(done) == 50 and len(started) == 3)

        private_redis.kill()
        outage_start = len(caplog.records)
        release.set()  # the held handlers finish now, while their acks cannot be sent
        await wait_for(lambda: len(done) == 53)
        error = await _publish_fails_clearly(producer)
        assert "connecting to 127.0.0.1" in error or "Connection" in error, error
        await anyio.sleep(1.0)  # let the worker's loops meet the outage a few times
        during = caplog.records[outage_start:]
        private_redis.start()

        after = await producer.publish_many([TaskSpec(task_type="noop", payload={})] * 50)
        await wait_for(lambda: len(done) == 103, timeout=60)
        await wait_for(lambda: _settled(redis, keys, settings.group), timeout=60)
        assert worker.acker.flushed_batches > 0

    assert sorted(done) == sorted(before + in_flight + after)  # each ran exactly once
    for task_id in in_flight:
        status = await producer.status.read(redis, task_id)
        assert status is not None and status.status == "completed"
    # no crash, no traceback storm: warnings only, each loop backing off
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    per_event = Counter(r.getMessage() for r in during)
    print(f"log lines while Redis was down: {dict(per_event)}")
    assert sum(per_event.values()) < 60, per_event
    await producer.aclose()
    await redis.aclose()


async def test_worker_processes_reconnect_and_finish_everything(
    settings: Settings, private_redis: EmbeddedRedis, worker_processes: list[WorkerProcess]
) -> None:
    settings = settings.with_overrides(redis_url=private_redis.url)
    keys = Keyspace(settings.prefix)
    redis = connect(private_redis.url)
    for n in (1, 2):
        start_worker_process(
            settings, "--concurrency", "4", registry=worker_processes,
            STREAMWORKER_CONSUMER=f"outage-{n}", LOG_LEVEL="info",
        )  # fmt: skip
    producer = Producer.from_settings(settings)
    done_key = f"{settings.prefix}test:done"
    first = await producer.publish_many(
        [TaskSpec(task_type="record", payload={"sleep": 0.01}) for _ in range(200)]
    )
    await wait_for(lambda: _count(redis, done_key, 20))  # work is under way

    private_redis.kill()
    await anyio.sleep(2.0)
    lines_before = [len(p.output().splitlines()) for p in worker_processes]
    await anyio.sleep(2.0)
    lines_after = [len(p.output().splitlines()) for p in worker_processes]
    lines_during = [b - a for a, b in zip(lines_before, lines_after, strict=True)]
    private_redis.start()

    second = await producer.publish_many(
        [TaskSpec(task_type="record", payload={}) for _ in range(200)]
    )
    await wait_for(lambda: _count(redis, done_key, 400), timeout=90)
    await wait_for(lambda: _settled(redis, keys, settings.group), timeout=60)
    assert set(await redis.smembers(done_key)) == {t.encode() for t in first + second}
    for process in worker_processes:
        assert process.proc.poll() is None, process.output()[-2000:]
        assert process.terminate() == 0
        output = process.output()
        assert "Traceback" not in output, output[-3000:]
        assert '"level": "error"' not in output and '"level":"error"' not in output
    # Not spinning: two seconds into the outage each worker wrote a handful of lines, not
    # thousands (each failing loop sleeps and backs off).
    print(f"worker log lines in 2 s of outage: {lines_during}")
    assert all(n < 40 for n in lines_during), lines_during
    await producer.aclose()
    await redis.aclose()


async def _count(redis: aioredis.Redis, key: str, n: int) -> bool:
    try:
        return int(await redis.scard(key)) >= n
    except RedisConnectionError:
        return False


async def test_producers_get_a_clear_error_while_redis_is_down_and_work_after(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    settings = settings.with_overrides(redis_url=private_redis.url)
    keys = Keyspace(settings.prefix)
    producer = Producer.from_settings(settings)
    await producer.publish("noop", {})
    with SyncProducer(settings) as sync_producer:
        sync_producer.publish("noop", {})
        private_redis.kill()
        error = await _publish_fails_clearly(producer)
        assert str(private_redis.port) in error, error
        with pytest.raises(RedisConnectionError) as caught:
            await anyio.to_thread.run_sync(sync_producer.publish, "noop", {})
        assert str(private_redis.port) in str(caught.value)
        private_redis.start()
        await producer.publish("noop", {})
        await anyio.to_thread.run_sync(sync_producer.publish, "noop", {})
    redis = connect(private_redis.url)
    # the two before the outage survived the kill -9 (AOF, fsync always) and the two after
    # went through on new connections; the two refused ones were never written
    assert await redis.xlen(keys.family("normal").stream) == 4
    await producer.aclose()
    await redis.aclose()


@pytest.mark.parametrize(
    ("appendonly", "fsync", "wait"),
    [(True, "always", 0.0), (True, "everysec", 1.5), (True, "no", 0.0), (False, "no", 0.0)],
)
async def test_published_tasks_survive_kill_9_of_redis(
    settings: Settings, appendonly: bool, fsync: str, wait: float
) -> None:
    """What a kill -9 of redis-server right after ``publish`` returns costs, per AOF policy.

    A process kill (not a host crash) leaves whatever Redis wrote to the AOF in the page
    cache, so with AOF on nothing acknowledged is lost; docs/durability.md has the table."""
    server = EmbeddedRedis(appendonly=appendonly, appendfsync=fsync).start()
    try:
        settings = settings.with_overrides(redis_url=server.url)
        keys = Keyspace(settings.prefix)
        producer = Producer.from_settings(settings)
        published = 0
        for _ in range(10):
            published += len(
                await producer.publish_many([TaskSpec(task_type="noop", payload={})] * 200)
            )
        await producer.publish("noop", {}, delay=3600)  # the delayed set too
        await anyio.sleep(wait)
        server.kill()
        server.start()
        redis = connect(server.url)
        with anyio.fail_after(30):
            while True:  # LOADING while the AOF is read back
                try:
                    kept = await redis.xlen(keys.family("normal").stream)
                    parked = await redis.zcard(keys.family("normal").delayed)
                    break
                except RedisConnectionError:
                    await anyio.sleep(0.05)
        print(f"appendonly={appendonly} appendfsync={fsync}: kept {kept}/{published}")
        if appendonly:
            assert (kept, parked) == (published, 1)
        else:
            assert (kept, parked) == (0, 0)  # no persistence: a restart loses everything
        await producer.aclose()
        await redis.aclose()
    finally:
        server.close()


async def test_worker_survives_a_failover_through_a_read_only_replica(
    settings: Settings, private_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """During a failover the address can briefly point at a replica, which answers writes
    with READONLY. The worker must wait that out like a connection error, not crash."""
    caplog.set_level(logging.INFO)
    settings = settings.with_overrides(redis_url=private_redis.url)
    redis = connect(private_redis.url)
    done: list[str] = []
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
        done.append(ctx.task_id)

    producer = Producer.from_settings(settings)
    async with running_worker(settings, registry):
        await producer.publish("noop", {})
        await wait_for(lambda: len(done) == 1)
        await redis.execute_command("REPLICAOF", "127.0.0.1", "1")  # read-only now
        await anyio.sleep(1.0)  # the worker's writes (promoter, reads) meet READONLY
        await redis.execute_command("REPLICAOF", "NO", "ONE")  # promoted: writable again
        await producer.publish("noop", {})
        await wait_for(lambda: len(done) == 2, timeout=30)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await producer.aclose()
    await redis.aclose()
