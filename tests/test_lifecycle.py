"""Delayed tasks, graceful shutdown, restart recovery and bounded memory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Producer, Registry, Settings, TaskContext, TaskSpec, Worker
from streamworker.keyspace import Keyspace
from tests.conftest import (
    ROOT,
    WorkerProcess,
    pending_is,
    running_worker,
    start_worker_process,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.anyio


async def test_delayed_task_waits_and_runs_once_with_three_promoters(
    settings: Settings, redis: aioredis.Redis
) -> None:
    started: list[tuple[str, float]] = []
    registry = Registry()

    @registry.handler("later")
    async def later(payload: dict[str, Any], ctx: TaskContext) -> None:
        started.append((ctx.task_id, time.time()))

    producer = Producer.from_settings(settings)
    published_at = time.time()
    ids = await producer.publish_many(
        [TaskSpec(task_type="later", payload={"i": i}, delay=1.0) for i in range(30)]
    )
    status = await producer.status.read(redis, ids[0])
    assert status is not None and status.status == "scheduled" and status.scheduled_for
    keys = Keyspace(settings.prefix)
    assert await redis.zcard(keys.family("normal").delayed) == 30
    workers = [settings.with_overrides(consumer=f"w{i}") for i in range(3)]
    async with (
        running_worker(workers[0], registry),
        running_worker(workers[1], registry),
        running_worker(workers[2], registry),
    ):
        await wait_for(lambda: len(started) >= 30)
        await anyio.sleep(0.5)  # would any promoter add a second copy?
    assert sorted(t for t, _ in started) == sorted(ids)  # each exactly once
    assert min(at for _, at in started) >= published_at + 1.0
    assert await redis.zcard(keys.family("normal").delayed) == 0
    await producer.aclose()


async def test_raw_entry_with_future_scheduled_for_is_parked(
    settings: Settings, redis: aioredis.Redis
) -> None:
    started: list[float] = []
    registry = Registry()

    @registry.handler("later")
    async def later(payload: dict[str, Any], ctx: TaskContext) -> None:
        started.append(time.time())

    due = time.time() + 1.0
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(due)) + f".{int(due % 1 * 1000):03d}Z"
    await redis.xadd(
        f"{settings.prefix}low_priority_tasks",
        {"task_type": "later", "payload": "{}", "scheduled_for": when},
    )
    async with running_worker(settings, registry):
        await wait_for(lambda: started)
    assert started[0] >= due - 0.01


async def test_restarted_consumer_finishes_its_own_pending_entries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A worker dies holding entries; the next process with the same consumer name runs them."""
    keys = Keyspace(settings.prefix)
    stream = keys.family("normal").stream
    producer = Producer.from_settings(settings)
    ids = await producer.publish_many([TaskSpec(task_type="job", payload={}) for _ in range(5)])
    await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
    # The "previous run": read the entries under this consumer name, then vanish.
    await redis.xreadgroup(settings.group, settings.consumer, {stream: ">"}, count=5)
    assert (await redis.xpending(stream, settings.group))["pending"] == 5

    ran: list[str] = []
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    async with running_worker(settings, registry):
        await wait_for(lambda: len(ran) == 5)
        await wait_for(lambda: pending_is(redis, stream, settings.group, 0))
    assert sorted(ran) == sorted(ids)
    await producer.aclose()


async def test_sigterm_lets_in_flight_tasks_finish_and_exits_zero(
    settings: Settings, redis: aioredis.Redis, worker_processes: list[WorkerProcess]
) -> None:
    keys = Keyspace(settings.prefix)
    producer = Producer.from_settings(settings)
    ids = await producer.publish_many(
        [TaskSpec(task_type="record", payload={"sleep": 1.0}) for _ in range(40)]
    )
    first = start_worker_process(
        settings, "--concurrency", "8", registry=worker_processes, STREAMWORKER_CONSUMER="sig-1"
    )
    done_key = f"{settings.prefix}test:done"
    # wait until a batch of handlers is running, then ask it to stop
    started_key = f"{settings.prefix}test:started"
    await wait_for(lambda: _count_at_least(redis, started_key, 8), timeout=30)
    rc = await anyio.to_thread.run_sync(first.terminate)
    assert rc == 0, first.output()
    finished = {m.decode() for m in await redis.smembers(done_key)}
    assert len(finished) >= 8, first.output()  # the in-flight batch finished in the grace
    stream = keys.family("normal").stream
    # Nothing lost: every task is either finished or still in Redis (pending or unread).
    remaining = await redis.xrange(stream)
    remaining_ids = {f[b"task_id"].decode() for _, f in remaining}
    assert finished | remaining_ids == set(ids)
    assert not finished & remaining_ids
    # The same consumer name, restarted, finishes the rest.
    second = start_worker_process(
        settings, "--concurrency", "20", registry=worker_processes, STREAMWORKER_CONSUMER="sig-1"
    )
    await wait_for(lambda: _set_size_is(redis, done_key, 40), timeout=60)
    assert await anyio.to_thread.run_sync(second.terminate) == 0, second.output()
    assert int(await redis.get(f"{settings.prefix}test:runs") or 0) == 40  # none ran twice
    await producer.aclose()


async def _count_at_least(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.scard(key)) >= n


async def _set_size_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return await redis.scard(key) == n


@pytest.mark.timeout(300)  # a drain, not a timed test: generous on a shared, busy machine
async def test_fifty_thousand_tasks_leave_memory_where_it_was(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = Registry()
    count = 0

    @registry.handler("noop")
    async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
        nonlocal count
        count += 1

    keys = Keyspace(settings.prefix)
    s = settings.with_overrides(worker_count=64)
    worker = Worker(s, registry=registry)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await anyio.sleep(0.2)
        baseline = (await redis.info("memory"))["used_memory"]
        producer = Producer.from_settings(s)
        total = 50_000
        for i in range(0, total, 1000):
            await producer.publish_many(
                [
                    TaskSpec(task_type="noop", payload={"i": j}, priority="normal")
                    for j in range(i, i + 1000)
                ]
            )
        await wait_for(lambda: count == total, timeout=280, interval=0.1)
        await wait_for(lambda: pending_is(redis, keys.family("normal").stream, s.group, 0))
        worker.stop()
    lengths = [await redis.xlen(f.stream) for f in keys.families]
    # status hashes are kept for COMPLETED_TTL_SECONDS by design: measure the queue itself
    async for key in redis.scan_iter(match=f"{settings.prefix}task:*", count=5000):
        await redis.unlink(key)
    after = (await redis.info("memory"))["used_memory"]
    print(
        f"\n50k tasks: used_memory before={baseline} after={after} delta={after - baseline} bytes"
    )
    assert lengths == [0, 0, 0, 0]
    assert after - baseline < 2 * 1024 * 1024  # within 2 MiB of the start
    await producer.aclose()


def test_cli_publish_status_stats(settings: Settings) -> None:
    env = worker_env(settings, STREAMWORKER_HANDLERS="handlers")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamworker", *args], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    published = cli(
        "publish",
        "test_notification",
        "--payload",
        '{"message": "Test notification"}',
        "--priority",
        "high",
    )
    assert published.returncode == 0, published.stderr
    task_id = published.stdout.strip()
    assert uuid.UUID(task_id)
    status = cli("status", task_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "queued"
    stats = json.loads(cli("stats", "--json").stdout)
    high = next(p for p in stats["priorities"] if p["priority"] == "high")
    assert high["length"] == 1 and high["backlog"] == 1
    bad = cli("publish", "test_notification", "--payload", '{"message": 5}')
    assert (
        bad.returncode == 1
        and "message" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
    unknown = cli("publish", "no_such_type", "--payload", "{}")
    assert unknown.returncode == 1 and "unknown task type" in unknown.stderr
    assert cli("status", str(uuid.uuid4())).returncode == 1
    assert cli("publish").returncode == 2  # usage error
    down = subprocess.run(
        [sys.executable, "-m", "streamworker", "stats"],
        env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 1 and "cannot reach Redis" in down.stderr


def test_dev_demo_runs_and_leaves_nothing_behind(settings: Settings) -> None:
    env = worker_env(settings, STREAMWORKER_HANDLERS="handlers")
    env.pop("REDIS_URL")
    result = subprocess.run(
        [sys.executable, "-m", "streamworker", "dev", "--demo", "--demo-count", "50",
         "--exit-after-demo"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "200 tasks published and handled" in result.stderr
    port = result.stderr.split("redis://127.0.0.1:", 1)[1].split("/", 1)[0]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=1)


async def test_sigterm_stops_a_worker_still_waiting_for_redis(
    settings: Settings, worker_processes: list[WorkerProcess]
) -> None:
    # Redis unreachable at start: the worker keeps retrying; SIGTERM must still end it, with
    # exit 0 and no traceback, rather than leaving it stuck or killed by the default action.
    from streamworker.embedded import free_port

    nowhere = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    process = start_worker_process(nowhere, registry=worker_processes, LOG_LEVEL="info")
    await wait_for(lambda: "redis_unavailable" in process.output(), timeout=60)
    rc = await anyio.to_thread.run_sync(process.terminate)
    assert rc == 0, process.output()
    assert "Traceback" not in process.output()
