"""Partitioned priority streams (issue 11): STREAM_PARTITIONS on one node and on a real
3-master Redis Cluster (``redis_cluster`` fixture).

On the cluster: 30,000 tasks published through the producer and raw XADD are drained by two
worker processes with nothing lost; a worker killed with SIGKILL has its pending entries
reclaimed on every partition; tasks sharing a ``partition_key`` run in publish order; stats and
dead-letter replay cover every partition.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ResponseError

from streamworker import Producer, Registry, Settings, TaskContext
from streamworker.broker import connect
from streamworker.channels import Services
from streamworker.deadletters import DeadLetters
from streamworker.embedded import EmbeddedCluster
from streamworker.keyspace import PRIORITIES, Keyspace, partition_tag
from streamworker.maintenance import Maintenance
from streamworker.observability.audit import AuditBuffer, StreamSink, stream_events
from streamworker.producer import TaskSpec
from streamworker.settings import ConfigError
from streamworker.stats import collect_stats
from streamworker.status import StatusStore
from tests.conftest import (
    WorkerProcess,
    recording_registry,
    running_worker,
    start_worker_process,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.anyio


# -- names ---------------------------------------------------------------------------------


def test_one_partition_keeps_the_contract_names() -> None:
    keys = Keyspace("x:")
    assert [f.stream for f in keys.families] == [f"x:{p}_priority_tasks" for p in PRIORITIES]
    assert keys.dead_letter_streams == ("x:failed_tasks",)
    assert keys.family("high").delayed == "x:high_priority_tasks:delayed"
    assert keys.status("t1") == "x:task:t1"
    assert keys.idempotency("k") == "x:idempotency:k"


def test_partitions_carry_a_hash_tag_spread_over_the_slot_space() -> None:
    keys = Keyspace("x:", partitions=6)
    assert len(keys.families) == 24
    for partition in range(6):
        tag = partition_tag(partition, 6)
        slot = key_slot(tag.encode())
        share = REDIS_CLUSTER_HASH_SLOTS // 6
        assert partition * share <= slot < (partition + 1) * share + 1
        family = keys.family("low", partition)
        assert family.stream == f"x:{{{tag}}}low_priority_tasks"
        # everything a script touches together is in one slot
        slots = {key_slot(k.encode()) for k in (family.stream, family.delayed, family.dead_letters)}
        slots.add(key_slot(keys.idempotency("k", partition).encode()))
        slots |= {key_slot(f.stream.encode()) for f in keys.partition_families(partition)}
        assert slots == {slot}
    # a single node keeps the plain task keys; a cluster tags them with the task id
    assert keys.status("t1") == "x:task:t1"
    clustered = Keyspace("x:", partitions=6, cluster=True)
    assert key_slot(clustered.status("t1").encode()) == key_slot(clustered.cancelled("t1").encode())
    assert key_slot(clustered.scheduler_leader.encode()) == key_slot(
        clustered.scheduler_fence.encode()
    )
    # the audit stream and its index are appended to by one script
    assert key_slot(clustered.audit_events.encode()) == key_slot(clustered.audit_index.encode())
    assert keys.audit_index == "x:audit_events:index"
    # one partition on a cluster still needs the tag: stream, delayed set and dead letters
    single = Keyspace(cluster=True)
    family = single.family("high")
    assert family.stream == "{p0}high_priority_tasks"
    assert (
        len({key_slot(k.encode()) for k in (family.stream, family.delayed, family.dead_letters)})
        == 1
    )
    # the same key always lands on the same partition
    assert keys.partition_for("patient-42") == Keyspace(partitions=6).partition_for("patient-42")


def test_bad_partition_settings_are_refused_with_the_variable_named() -> None:
    for raw in ("0", "-1", "257", "two"):
        with pytest.raises(ConfigError, match="STREAM_PARTITIONS"):
            Settings.from_env({"STREAM_PARTITIONS": raw})
    with pytest.raises(ConfigError, match="REDIS_CLUSTER"):
        Settings.from_env({"REDIS_CLUSTER": "maybe"})
    with pytest.raises(ConfigError, match="STREAMWORKER_PREFIX"):
        Settings.from_env({"REDIS_CLUSTER": "true", "STREAMWORKER_PREFIX": "{a}:"})
    settings = Settings.from_env({"REDIS_CLUSTER": "yes", "STREAM_PARTITIONS": "12"})
    assert settings.keyspace() == Keyspace(partitions=12, cluster=True)


# -- one node, several partitions ---------------------------------------------------------------


async def test_one_node_spreads_tasks_over_partitions_and_drains_them(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.with_overrides(stream_partitions=4)
    keys = settings.keyspace()
    producer = Producer.from_settings(settings)
    ids = await producer.publish_many(
        [TaskSpec(task_type="noop", payload={}, priority=p) for p in PRIORITIES for _ in range(100)]
    )
    keyed = await producer.publish_many(
        [TaskSpec(task_type="noop", payload={}, partition_key="patient-7")] * 20
    )
    await producer.aclose()
    lengths = {f.stream: int(await redis.xlen(f.stream)) for f in keys.families}
    home = keys.family("normal", keys.partition_for("patient-7")).stream
    for family in keys.families:
        expected = 25 + (20 if family.stream == home else 0)
        assert lengths[family.stream] == expected, family.stream

    stats = await collect_stats(redis, keys, settings.group)
    assert [p.length for p in stats.priorities] == [100, 100, 120, 100]
    assert len(stats.partitions) == 16 and sum(p.length for p in stats.partitions) == 420

    ran: list[str] = []
    async with running_worker(settings, recording_registry(ran)):
        await wait_for(lambda: len(ran) == 420)
    assert Counter(ran) == Counter(ids + keyed)
    stats = await collect_stats(redis, keys, settings.group)
    assert stats.backlog == 0 and all(p.pending == 0 for p in stats.partitions)


async def test_strict_priority_holds_across_partitions_on_one_node(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.with_overrides(stream_partitions=3, worker_count=1)
    producer = Producer.from_settings(settings)
    low = await producer.publish_many([TaskSpec(task_type="noop", payload={}, priority="low")] * 30)
    critical = await producer.publish_many(
        [TaskSpec(task_type="noop", payload={}, priority="critical")] * 30
    )
    await producer.aclose()
    ran: list[str] = []
    async with running_worker(settings, recording_registry(ran)):
        await wait_for(lambda: len(ran) == 60)
    # one slot: every critical task (on any partition) before any low one
    assert set(ran[:30]) == set(critical) and set(ran[30:]) == set(low)


async def _dead_letter_everywhere(settings: Settings, redis: aioredis.Redis) -> list[str]:
    """One entry of an unknown task type on every partition of `high` (raw XADD), drained by
    a worker so each lands in its own partition's dead letters; returns the stream names."""
    keys = settings.keyspace()
    streams = [keys.family("high", p).stream for p in range(keys.partitions)]
    for stream in streams:
        await redis.xadd(stream, {"task_type": "later", "payload": '{"n": 1}'})
    async with running_worker(settings, Registry()):
        await wait_for(lambda: _dead_count(redis, keys, len(streams)))
    return streams


async def _dead_count(redis: aioredis.Redis, keys: Keyspace, n: int) -> bool:
    return sum([int(await redis.xlen(s)) for s in keys.dead_letter_streams]) == n


async def _replay_all_and_run(
    settings: Settings, redis: aioredis.Redis, count: int, *, one_per_partition: bool = True
) -> None:
    keys = settings.keyspace()
    dlq = DeadLetters.from_settings(settings)
    try:
        page = await dlq.list(limit=count + 5)
        assert page.total == count and len(page.entries) == count
        if one_per_partition:
            partitions = sorted(int(e.id.rsplit("@", 1)[1]) for e in page.entries)
            assert partitions == list(range(count))
        # newest first across partitions, and paging by cursor sees each entry once
        first = await dlq.list(limit=2)
        rest = await dlq.list(limit=count, after=first.next_cursor) if count > 2 else None
        paged = first.entries + (rest.entries if rest else [])
        assert [e.id for e in paged] == [e.id for e in page.entries]
        shown = await dlq.get(page.entries[0].id)
        assert shown is not None and shown.payload == '{"n": 1}'
        plain_id = page.entries[0].id.split("@")[0]
        assert (await dlq.get(plain_id)) is not None  # found whichever partition has it
        summary = await dlq.replay(all=True)
        assert summary.replayed == count and summary.failed == 0
    finally:
        await dlq.aclose()
    ran: list[str] = []
    registry = Registry()

    @registry.handler("later")
    async def later(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    async with running_worker(settings, registry):
        await wait_for(lambda: len(ran) == count)
    assert await _dead_count(redis, keys, 0)


async def test_dead_letters_of_every_partition_list_replay_and_purge_as_one(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.with_overrides(stream_partitions=4)
    await _dead_letter_everywhere(settings, redis)
    stats = await collect_stats(redis, settings.keyspace(), settings.group)
    assert stats.dead_letters == 4
    # the maintenance summary and the report handlers' counts read every partition too
    summary = await Maintenance(redis, settings.keyspace(), 60).dead_letter_summary()
    assert (summary.total, summary.examined) == (4, 4)
    counts = await Services(settings, redis, settings.keyspace()).dead_letter_counts()
    assert counts["total"] == 4
    await _replay_all_and_run(settings, redis, 4)
    await _dead_letter_everywhere(settings, redis)
    dlq = DeadLetters.from_settings(settings)
    try:
        assert await dlq.purge() == 4
        assert (await dlq.list()).total == 0
    finally:
        await dlq.aclose()


# -- a real 3-master cluster ---------------------------------------------------------------


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: EmbeddedCluster) -> Settings:
    return settings.with_overrides(
        redis_url=redis_cluster.url, redis_cluster=True, stream_partitions=6
    )


@pytest.fixture
async def cluster_redis(redis_cluster: EmbeddedCluster) -> Any:
    client = connect(redis_cluster.url, cluster=True)
    await client.initialize()  # type: ignore[attr-defined]  # learn the slot map now
    try:
        yield client
    finally:
        await client.aclose()


def _cluster_env(settings: Settings, consumer: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_CLUSTER": "true",
        "STREAM_PARTITIONS": str(settings.stream_partitions),
        "STREAMWORKER_CONSUMER": consumer,
        "VISIBILITY_TIMEOUT_SECONDS": "2",
        "RECLAIM_INTERVAL_SECONDS": "0.5",
        **extra,
    }


def _start_cluster_worker(
    settings: Settings, consumer: str, concurrency: int, started: list[WorkerProcess]
) -> WorkerProcess:
    return start_worker_process(
        settings,
        "--concurrency",
        str(concurrency),
        registry=started,
        **_cluster_env(settings, consumer),
    )


async def test_cluster_partitions_spread_over_every_master(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    keys = cluster_settings.keyspace()
    owners = {cluster_redis.get_node_from_key(f.stream).port for f in keys.families}
    assert len(owners) == 3


async def test_cluster_two_workers_drain_thirty_thousand_tasks(
    cluster_settings: Settings, cluster_redis: Any, worker_processes: list[WorkerProcess]
) -> None:
    settings = cluster_settings
    keys = settings.keyspace()
    producer = Producer.from_settings(settings)
    published: list[str] = []
    priorities = ("high", "normal", "low")
    for start in range(0, 27_000, 1_000):
        published += await producer.publish_many(
            [TaskSpec(task_type="record", payload={}, priority=priorities[start // 1000 % 3])]
            * 1_000
        )
    await producer.aclose()
    # raw XADD producers write to any partition stream directly
    for n in range(3_000):
        family = keys.family(priorities[n % 3], n % keys.partitions)
        await cluster_redis.xadd(
            family.stream, {"task_type": "record", "payload": "{}", "task_id": f"raw-{n}"}
        )
        published.append(f"raw-{n}")
    assert len(set(published)) == 30_000

    began = time.monotonic()
    for name in ("w-a", "w-b"):
        _start_cluster_worker(settings, name, 64, worker_processes)
    done_key = f"{settings.prefix}test:done"

    async def all_done() -> bool:
        return int(await cluster_redis.scard(done_key)) == 30_000

    await wait_for(all_done, timeout=240, interval=0.2)
    elapsed = time.monotonic() - began
    print(f"\ncluster drain: 30000 tasks, 2 workers, {30_000 / elapsed:.0f} tasks/s incl. start")
    stats = await collect_stats(cluster_redis, keys, settings.group)
    assert stats.backlog == 0 and stats.dead_letters == 0
    # both workers took part, on every partition
    for family in keys.families:
        if family.priority == "critical":
            continue
        consumers = await cluster_redis.xinfo_consumers(family.stream, settings.group)
        assert len(consumers) == 2, family.stream
    for process in worker_processes:
        assert process.terminate() == 0, process.output()


async def test_cluster_killed_worker_is_reclaimed_on_every_partition(
    cluster_settings: Settings, cluster_redis: Any, worker_processes: list[WorkerProcess]
) -> None:
    settings = cluster_settings
    keys = settings.keyspace()
    victim = _start_cluster_worker(settings, "victim", 60, worker_processes)
    streams = [keys.family("normal", p).stream for p in range(keys.partitions)]

    async def victim_waits_on_every_partition() -> bool:
        # Its readers wait on their partitions (a consumer exists once it has read), so each
        # takes entries as they come: on a slow machine a victim that started after the
        # publish could fill its 60 slots from the first partitions it read.
        for stream in streams:
            try:
                consumers = await cluster_redis.xinfo_consumers(stream, settings.group)
            except ResponseError:  # NOGROUP: the worker has not made its groups yet
                return False
            if not any(c["name"] == b"victim" for c in consumers):
                return False
        return True

    await wait_for(victim_waits_on_every_partition, timeout=60)
    producer = Producer.from_settings(settings)
    ids = await producer.publish_many([TaskSpec(task_type="record", payload={"sleep": 30})] * 120)
    await producer.aclose()

    async def owned_by_victim() -> list[int]:
        counts = []
        for stream in streams:
            try:
                rows = await cluster_redis.xpending_range(
                    stream, settings.group, min="-", max="+", count=200, consumername="victim"
                )
            except ResponseError:  # NOGROUP: the worker has not made its groups yet
                return [0]
            counts.append(len(rows))
        return counts

    async def victim_holds_every_partition() -> bool:
        return all(await owned_by_victim())

    await wait_for(victim_holds_every_partition, timeout=30)
    victim.kill()
    _start_cluster_worker(settings, "rescuer", 150, worker_processes)
    started_key = f"{settings.prefix}test:started"

    async def victim_owns_nothing() -> bool:
        return not any(await owned_by_victim())

    await wait_for(victim_owns_nothing, timeout=60, interval=0.2)

    # every task was started again by the rescuer (the sleep keeps them running)
    async def all_started() -> bool:
        return int(await cluster_redis.scard(started_key)) == len(ids)

    await wait_for(all_started, timeout=30)
    for stream in streams:
        rows = await cluster_redis.xpending_range(
            stream, settings.group, min="-", max="+", count=200, consumername="rescuer"
        )
        assert rows, f"nothing reclaimed on {stream}"


async def test_cluster_same_partition_key_runs_in_publish_order(
    cluster_settings: Settings, cluster_redis: Any, worker_processes: list[WorkerProcess]
) -> None:
    settings = cluster_settings
    keys = settings.keyspace()
    producer = Producer.from_settings(settings)
    for start in range(0, 1_000, 100):
        await producer.publish_many(
            [
                TaskSpec(task_type="sequence", payload={"seq": n}, partition_key="patient-42")
                for n in range(start, start + 100)
            ]
        )
    # other keys' tasks in between do not disturb the order of this one
    await producer.publish_many(
        [TaskSpec(task_type="noop", payload={}, partition_key=f"p-{n}") for n in range(300)]
    )
    await producer.aclose()
    home = keys.family("normal", keys.partition_for("patient-42")).stream
    assert int(await cluster_redis.xlen(home)) >= 1_000
    _start_cluster_worker(settings, "ordered", 1, worker_processes)
    order_key = f"{settings.prefix}test:order"

    async def all_ran() -> bool:
        return int(await cluster_redis.llen(order_key)) == 1_000

    await wait_for(all_ran, timeout=120, interval=0.2)
    ran = [int(x) for x in await cluster_redis.lrange(order_key, 0, -1)]
    assert ran == list(range(1_000))


async def test_cluster_dead_letters_and_stats_cover_every_partition(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    settings = cluster_settings
    await _dead_letter_everywhere(settings, cluster_redis)
    stats = await collect_stats(cluster_redis, settings.keyspace(), settings.group)
    assert stats.dead_letters == 6 and len(stats.partitions) == 24
    await _replay_all_and_run(settings, cluster_redis, 6)


async def test_cluster_idempotent_publish_and_status(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    settings = cluster_settings
    producer = Producer.from_settings(settings)
    keys = settings.keyspace()
    first = await producer.publish("noop", {}, idempotency_key="visit-1")
    again = await producer.publish("noop", {}, idempotency_key="visit-1")
    assert first == again
    # ids the producer makes put a task's status in its stream's slot ...
    plain = await producer.publish_many([TaskSpec(task_type="noop", payload={})] * 20)
    # ... and a given id with a partition key of its own may not: written apart, still there
    given = str(uuid.uuid4())
    apart = await producer.publish("noop", {}, task_id=given, partition_key="elsewhere")
    apart_once = await producer.publish(
        "noop", {}, task_id=str(uuid.uuid4()), partition_key="elsewhere", idempotency_key="v-2"
    )
    await producer.aclose()
    assert apart == given
    for task_id in plain:
        home = keys.family("normal", keys.status_partition(task_id)).stream
        assert key_slot(keys.status(task_id).encode()) == key_slot(home.encode())
        assert int(await cluster_redis.xlen(home)) > 0
    everything = [first, *plain, apart, apart_once]
    for task_id in everything:
        status = await cluster_redis.hgetall(keys.status(task_id))
        assert status[b"status"] == b"queued", task_id
    ran: list[str] = []
    async with running_worker(settings, recording_registry(ran)):
        await wait_for(lambda: len(ran) == len(everything))

    async def completed() -> bool:
        states = [await cluster_redis.hget(keys.status(t), "status") for t in everything]
        return states == [b"completed"] * len(everything)

    await wait_for(completed)


# -- changing the partition count -------------------------------------------------------------


async def _switch_partitions(old: Settings, new: Settings, redis: Any) -> None:
    """Drain-then-switch from ``old`` to ``new`` with delayed tasks, dead letters and an
    idempotency key left in the old layout; the CLI refuses while an entry is still queued."""
    producer = Producer.from_settings(old)
    # Due only after the drain below (on a loaded machine that can take seconds): a delayed
    # task that ran in the drain would never reach the migration.
    delayed = await producer.publish_many(
        [TaskSpec(task_type="noop", payload={}, delay=6, partition_key=f"k{n}") for n in range(30)]
    )
    visit = await producer.publish("noop", {}, delay=6, idempotency_key="visit-9")
    await _dead_letter_everywhere(old, redis)
    straggler = await producer.publish("noop", {})
    await producer.aclose()

    env = worker_env(old, STREAM_PARTITIONS=str(new.stream_partitions))
    if old.redis_cluster:
        env["REDIS_CLUSTER"] = "true"
    command = [sys.executable, "-m", "streamworker", "partitions", "migrate"]
    command += ["--from", str(old.stream_partitions)]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "still hold queued or pending entries" in refused.stderr
    assert "_priority_tasks (1)" in refused.stderr  # names the stream, and how many
    old_keys = old.keyspace()
    assert sum([int(await redis.zcard(f.delayed)) for f in old_keys.families]) == 31

    ran: list[str] = []
    async with running_worker(old, recording_registry(ran)):  # the drain
        await wait_for(lambda: ran == [straggler])
    dry = subprocess.run(
        [*command, "--dry-run", "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert dry.returncode == 0, dry.stderr
    counted = msgspec.json.decode(dry.stdout)
    assert (
        counted["dry_run"]
        and sum([int(await redis.zcard(f.delayed)) for f in old_keys.families]) == 31
    )
    done = subprocess.run(
        [*command, "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    report = msgspec.json.decode(done.stdout)
    # what already sits where the new layout wants it (a partition whose tag is unchanged)
    # stays and is not counted
    new_keys = new.keyspace()
    moved_all = not set(old_keys.families) & set(new_keys.families)
    assert report["delayed"] == 31 if moved_all else 0 < report["delayed"] <= 31
    assert 0 < report["dead_letters"] <= old_keys.partitions
    assert report["idempotency_keys"] <= 1
    for name in ("delayed", "dead_letters", "idempotency_keys", "task_keys"):
        assert counted[name] == report[name], name  # the dry run counted what then moved

    kept = {f.delayed for f in new_keys.families}
    left = [await redis.zcard(f.delayed) for f in old_keys.families if f.delayed not in kept]
    assert sum(left) == 0
    assert sum([int(await redis.zcard(f.delayed)) for f in new_keys.families]) == 31
    # the statuses written before the switch are found with the new layout
    status = await StatusStore(new_keys, 60).read(redis, straggler)
    assert status is not None and status.status == "completed"
    producer = Producer.from_settings(new)
    assert await producer.publish("noop", {}, delay=6, idempotency_key="visit-9") == visit
    await producer.aclose()
    ran.clear()
    async with running_worker(new, recording_registry(ran)):
        await wait_for(lambda: len(ran) == 31)
    assert sorted(ran) == sorted([*delayed, visit])
    await _replay_all_and_run(new, redis, old_keys.partitions, one_per_partition=False)


async def test_switch_one_node_from_one_partition_to_three(
    settings: Settings, redis: aioredis.Redis
) -> None:
    await _switch_partitions(settings, settings.with_overrides(stream_partitions=3), redis)


async def test_switch_cluster_from_six_partitions_to_four(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    new = cluster_settings.with_overrides(stream_partitions=4)
    await _switch_partitions(cluster_settings, new, cluster_redis)


async def test_queue_gauges_sum_partitions_and_show_each(
    settings: Settings, redis: aioredis.Redis
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from streamworker.observability.metrics import QueueCollector

    settings = settings.with_overrides(stream_partitions=3)
    producer = Producer.from_settings(settings)
    await producer.publish_many([TaskSpec(task_type="noop", payload={}, priority="low")] * 9)
    await producer.aclose()
    registry = CollectorRegistry()
    collector = QueueCollector(redis, settings.keyspace(), settings.group)
    registry.register(collector)
    await collector.refresh()
    text = generate_latest(registry).decode()
    assert 'task_queue_size{priority="low"} 9.0' in text
    for partition in range(3):
        assert f'task_queue_partition_size{{partition="{partition}",priority="low"}} 3.0' in text


async def test_cluster_scheduler_leases_and_publishes_each_occurrence_once(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    from streamworker.scheduler import Schedule, Scheduler
    from tests.test_scheduler import ManualClock

    settings = cluster_settings
    schedules = [Schedule(name="m", cron="* * * * *", task_type="noop")]
    t0 = (int(time.time()) // 60) * 60
    clock = ManualClock(t0 - 0.5)
    registry = recording_registry([])
    one = Scheduler(
        settings.with_overrides(consumer="s-1"), schedules, registry=registry, clock=clock,
        redis=cluster_redis,
    )  # fmt: skip
    two = Scheduler(
        settings.with_overrides(consumer="s-2"), schedules, registry=registry, clock=clock,
        redis=cluster_redis,
    )  # fmt: skip
    assert await one.lease.try_acquire()
    assert not await two.lease.try_acquire()  # one leader at a time, on the tagged keys
    await one.tick()
    clock.t = t0 + 0.5
    await one.tick()
    # a racing second publisher of the same occurrence finds its key
    await two.producer.publish("noop", {}, idempotency_key=f"schedule:m:{t0}")
    keys = settings.keyspace()
    entries = [e for f in keys.families for e in await cluster_redis.xrange(f.stream)]
    assert len(entries) == 1
    assert (await one.state.read("m")).last_fire == t0


async def test_cluster_api_submit_status_cancel_stats_and_dead_letters(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    import httpx

    from tests.api_helpers import TOKEN, api_settings, serving_api

    settings = api_settings(cluster_settings)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with serving_api(settings) as url, httpx.AsyncClient(base_url=url, headers=auth) as http:
        later = {"task_type": "test_notification", "payload": {"message": "hi"}}
        later["scheduled_for"] = "2099-01-01T00:00:00Z"
        submitted = await http.post("/api/v1/tasks/submit", json=later)
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]
        keyed = {"task_type": "test_notification", "payload": {"message": "x"}}
        again = await http.post("/api/v1/tasks/submit", json={**keyed, "partition_key": "p-1"})
        assert again.status_code == 202
        status = await http.get(f"/api/v1/tasks/{task_id}/status")
        assert status.json()["status"] == "scheduled"
        cancelled = await http.post(f"/api/v1/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert (await http.get(f"/api/v1/tasks/{task_id}/status")).json()["status"] == "cancelled"
        stats = (await http.get("/api/v1/tasks/stats")).json()
        assert len(stats["partitions"]) == 24
        assert sum(p["length"] for p in stats["priorities"]) == 1  # the keyed one
        assert (await http.get("/api/v1/dead-letters")).json()["total"] == 0


async def test_cluster_audit_stream_is_appended_and_capped(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    keys = cluster_settings.keyspace()
    sink = StreamSink(
        AuditBuffer("stream", 1000),
        cluster_redis,
        keys.audit_events,
        150,
        index=keys.audit_index,
        service="s",
        consumer="c",
    )
    for i in range(400):
        sink.buffer.put([f"t{i}", "noop", "normal", 1, 0])
    await sink._drain()
    assert sink.buffer.sent == 400 and sink.retries == 0
    events = stream_events(await cluster_redis.xrange(keys.audit_events))
    assert 150 <= len(events) < 250 and events[-1]["task_id"] == "t399"
    await cluster_redis.delete(keys.audit_events, keys.audit_index)
