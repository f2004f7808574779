"""Recovery against the real redis-server: XAUTOCLAIM of a dead consumer's entries, lease
renewal of long handlers, the delivery-count reaper, consumer hygiene and cancelled tasks."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Producer, Registry, Settings, TaskContext, TaskSpec
from streamworker.broker import Broker, Settlement
from streamworker.keyspace import Keyspace, StreamFamily
from streamworker.status import StatusStore
from streamworker.wire import Delivery, format_time, pack_fields
from tests.conftest import dead_letters, pending_is, running_worker, status_is, wait_for

pytestmark = pytest.mark.anyio


def fast_recovery(settings: Settings, **changes: Any) -> Settings:
    return settings.with_overrides(
        visibility_timeout_seconds=changes.pop("visibility_timeout_seconds", 0.5),
        reclaim_interval_seconds=changes.pop("reclaim_interval_seconds", 0.1),
        **changes,
    )


async def strand(redis: aioredis.Redis, settings: Settings, stream: str, count: int) -> None:
    """Deliver ``count`` entries to a consumer that then 'dies' (never acknowledges)."""
    await redis.xreadgroup(settings.group, "dead-consumer", {stream: ">"}, count=count)


async def test_a_dead_consumers_entries_are_reclaimed_and_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = fast_recovery(settings)
    stream = Keyspace(settings.prefix).family("high").stream
    producer = Producer.from_settings(settings)
    ids = await producer.publish_many(
        [TaskSpec(task_type="job", payload={"n": i}, priority="high") for i in range(30)]
    )
    ran: list[str] = []
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
    await strand(redis, settings, stream, 30)
    # XAUTOCLAIM walks the pending list in COUNT-sized steps with a cursor; a small batch
    # makes the walk take several calls.
    async with running_worker(settings, registry) as worker:
        worker.recoverer._max_batch = 7
        await wait_for(lambda: len(ran) == 30)
        await wait_for(lambda: pending_is(redis, stream, settings.group, 0))
        assert worker.recoverer.reclaimed == 30
    assert sorted(ran) == sorted(ids)
    await producer.aclose()


async def test_pending_ids_whose_entry_was_deleted_are_counted_not_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = fast_recovery(settings)
    stream = Keyspace(settings.prefix).family("normal").stream
    producer = Producer.from_settings(settings)
    await producer.publish_many([TaskSpec(task_type="job", payload={}) for _ in range(4)])
    await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
    entries = await redis.xreadgroup(settings.group, "dead-consumer", {stream: ">"}, count=4)
    stranded = [entry_id for entry_id, _ in entries[0][1]]
    await redis.xdel(stream, *stranded[:2])
    runs = 0
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        nonlocal runs
        runs += 1

    async with running_worker(settings, registry) as worker:
        await wait_for(lambda: runs == 2)
        await wait_for(lambda: pending_is(redis, stream, settings.group, 0))
        assert worker.recoverer.deleted == 2
    assert runs == 2
    await producer.aclose()


async def test_a_long_handler_keeps_its_lease_and_runs_once_with_two_workers(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # The handler runs for 3x the visibility timeout; without lease renewal the second
    # worker's recoverer would take it over and run it again.
    settings = fast_recovery(settings, visibility_timeout_seconds=0.6)
    runs: list[str] = []
    registry = Registry()

    @registry.handler("slow")
    async def slow(payload: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.task_id)
        await anyio.sleep(1.8)

    producer = Producer.from_settings(settings)
    task_id = await producer.publish("slow", {})
    first = settings.with_overrides(consumer=settings.consumer + "-a")
    second = settings.with_overrides(consumer=settings.consumer + "-b")
    async with running_worker(first, registry) as a, running_worker(second, registry) as b:
        await wait_for(lambda: status_is(redis, settings, task_id, "completed"))
        assert a.leases.renewed + b.leases.renewed >= 2
        assert a.recoverer.reclaimed + b.recoverer.reclaimed == 0
    assert runs == [task_id]
    await producer.aclose()


async def test_an_entry_delivered_too_often_is_reaped_not_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = fast_recovery(settings, max_deliveries=3)
    family = Keyspace(settings.prefix).family("critical")
    producer = Producer.from_settings(settings)
    task_id = await producer.publish("poison", {"x": 1}, priority="critical")
    await redis.xgroup_create(family.stream, settings.group, id="0", mkstream=True)
    # Three deliveries to consumers that died before doing anything (as a task that kills
    # its worker would leave it); the next claim would be the fourth.
    await strand(redis, settings, family.stream, 1)
    for _ in range(2):
        await redis.xreadgroup(settings.group, "dead-consumer", {family.stream: "0"}, count=1)
    runs = 0
    registry = Registry()

    @registry.handler("poison")
    async def poison(payload: dict[str, Any], ctx: TaskContext) -> None:
        nonlocal runs
        runs += 1

    async with running_worker(settings, registry):
        await wait_for(lambda: status_is(redis, settings, task_id, "failed"))
    assert runs == 0
    [dead] = await dead_letters(redis, settings)
    assert dead["dlq_reason"] == "max_deliveries_exceeded"
    assert dead["deliveries"] == "4"
    assert dead["task_id"] == task_id
    assert dead["source_stream"] == family.stream
    assert {"source_id", "group", "consumer", "failed_at", "dlq_error", "payload"} <= set(dead)
    assert await pending_is(redis, family.stream, settings.group, 0)
    await producer.aclose()


async def test_own_pending_entries_reread_on_restart_also_count_deliveries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A worker that keeps its name across restarts (a Kubernetes pod) re-reads its own
    # pending entries at start: a poison task must not kill it forever.
    settings = settings.with_overrides(max_deliveries=2)
    stream = Keyspace(settings.prefix).family("normal").stream
    producer = Producer.from_settings(settings)
    await producer.publish("poison", {})
    await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
    await redis.xreadgroup(settings.group, settings.consumer, {stream: ">"}, count=1)
    await redis.xreadgroup(settings.group, settings.consumer, {stream: "0"}, count=1)
    registry = Registry()

    @registry.handler("poison")
    async def poison(payload: dict[str, Any], ctx: TaskContext) -> None:
        raise AssertionError("must not run")

    async with running_worker(settings, registry):
        await wait_for(lambda: _dead_letter_count_is(redis, settings, 1))
    [dead] = await dead_letters(redis, settings)
    assert dead["dlq_reason"] == "max_deliveries_exceeded"
    assert dead["deliveries"] == "3"
    await producer.aclose()


async def _dead_letter_count_is(redis: aioredis.Redis, settings: Settings, n: int) -> bool:
    return len(await dead_letters(redis, settings)) == n


async def test_idle_consumers_without_pending_entries_are_removed_others_kept(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.with_overrides(consumer_idle_seconds=0.4)
    stream = Keyspace(settings.prefix).family("low").stream
    producer = Producer.from_settings(settings)
    await producer.publish("job", {}, priority="low")
    await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
    await redis.xreadgroup(settings.group, "gone-busy", {stream: ">"}, count=1)  # owns it
    await redis.xgroup_createconsumer(stream, settings.group, "gone-empty")  # owns nothing
    await anyio.sleep(0.5)
    async with running_worker(settings, Registry()) as worker:
        await wait_for(lambda: worker.janitor.removed >= 1)
        consumers = {
            c["name"].decode(): int(c["pending"])
            for c in await redis.xinfo_consumers(stream, settings.group)
        }
    # The empty one is gone; the one that still owns an entry is never deleted (its entry
    # would be lost); the worker's own consumer stays.
    assert "gone-empty" not in consumers
    assert consumers["gone-busy"] == 1
    assert settings.consumer in consumers
    await producer.aclose()


async def test_cancelled_tasks_never_reach_a_worker(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # On a single Redis a cancel deletes a queued task's unread entry, and the promoter drops
    # a cancelled scheduled task (by its status, or by its marker once the status expired):
    # the worker reads without a start gate and never sees them.
    from streamworker.cancel import CancelOutcome, TaskCanceller

    keys = Keyspace(settings.prefix)
    settings = settings.with_overrides(promote_interval_seconds=0.05)
    producer = Producer.from_settings(settings)
    kept, queued, later, expired = await producer.publish_many(
        [
            TaskSpec(task_type="job", payload={}),
            TaskSpec(task_type="job", payload={}),
            TaskSpec(task_type="job", payload={}, delay=0.3),
            TaskSpec(task_type="job", payload={}, delay=0.3),
        ]
    )
    canceller = TaskCanceller(redis, keys, settings.completed_ttl_seconds, group=settings.group)
    for task_id in (queued, later, expired):
        assert (await canceller.cancel(task_id)).outcome is CancelOutcome.CANCELLED
    stream = keys.family("normal").stream
    assert await redis.xlen(stream) == 1  # the queued one's entry is gone already
    await redis.delete(keys.status(expired))  # its marker alone says it was cancelled
    ran: list[str] = []
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    async with running_worker(settings, registry) as worker:
        await wait_for(lambda: status_is(redis, settings, kept, "completed"))
        await wait_for(lambda: _zcard_is(redis, keys.family("normal").delayed, 0))
        await wait_for(lambda: pending_is(redis, stream, settings.group, 0))
        assert worker.reader.read_count == 1
    assert ran == [kept]
    assert await redis.xlen(stream) == 0
    for task_id in (queued, later):
        assert await status_is(redis, settings, task_id, "cancelled")
    await producer.aclose()


async def test_a_deferred_task_cancelled_while_parked_never_runs_again(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A handler that defers parks its task as 'scheduled' (status and parking in one step);
    # cancelled while parked, the promoter drops it.
    from streamworker import Defer
    from streamworker.cancel import CancelOutcome, TaskCanceller

    keys = Keyspace(settings.prefix)
    settings = settings.with_overrides(promote_interval_seconds=0.05)
    runs: list[int] = []
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.attempt)
        raise Defer(0.5, "later")

    producer = Producer.from_settings(settings)
    task_id = await producer.publish("job", {})
    canceller = TaskCanceller(redis, keys, settings.completed_ttl_seconds, group=settings.group)
    family = keys.family("normal")
    async with running_worker(settings, registry):
        await wait_for(lambda: status_is(redis, settings, task_id, "scheduled"))
        assert (await canceller.cancel(task_id)).outcome is CancelOutcome.CANCELLED
        await wait_for(lambda: _zcard_is(redis, family.delayed, 0))
        await wait_for(lambda: pending_is(redis, family.stream, settings.group, 0))
    assert runs == [1]
    assert await redis.xlen(family.stream) == 0
    assert await status_is(redis, settings, task_id, "cancelled")
    await producer.aclose()


async def _zcard_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.zcard(key)) == n


async def test_a_cancel_and_a_read_cannot_both_win(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A cancel that comes first deletes the unread entry, so no read can return it; once a
    # read has returned an entry (pending), a cancel is refused (409 over HTTP). Never both.
    from streamworker.cancel import CancelOutcome, TaskCanceller

    producer = Producer.from_settings(settings)
    first, second, third = await producer.publish_many(
        [TaskSpec(task_type="job", payload={}) for _ in range(3)]
    )
    # The broker alone, as the reader uses it (a running worker would race us for the batch).
    keys, broker, _, index = await _broker_on_normal(settings, redis)
    canceller = TaskCanceller(redis, keys, settings.completed_ttl_seconds, group=settings.group)
    assert (await canceller.cancel(second)).outcome is CancelOutcome.CANCELLED
    assert (await canceller.cancel(second)).outcome is CancelOutcome.ALREADY_CANCELLED
    deliveries = await broker.read(settings.consumer, 1, [index], [1], [">"])
    assert [d.task_id_field for d in deliveries] == [first.encode()]
    late = await canceller.cancel(first)
    assert late.outcome is CancelOutcome.CONFLICT and late.state == "running"
    assert await status_is(redis, settings, first, "queued")  # written by its outcome
    # Settled: the entry is gone, and a cancel still finds it too late.
    await broker.settle(Settlement({index: [deliveries[0].entry_id]}, [], {first: deliveries[0]}))
    status = await producer.status.read(redis, first)
    assert status is not None and status.status == "completed"
    assert status.started_at == format_time(deliveries[0].read_at)
    assert (await canceller.cancel(first)).state == "completed"
    rest = await broker.read(settings.consumer, 5, [index], [5], [">"])
    assert [d.task_id_field for d in rest] == [third.encode()]
    await producer.aclose()


async def test_a_queued_status_without_its_entry_place_is_not_cancelled(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A status written by an earlier version does not say where the entry is: whether it was
    # read cannot be told, so the cancel is refused and says why; the entry runs.
    from streamworker.cancel import CancelOutcome, TaskCanceller

    keys = Keyspace(settings.prefix)
    producer = Producer.from_settings(settings)
    task_id = await producer.publish("job", {})
    await redis.hdel(keys.status(task_id), "stream", "entry_id")
    canceller = TaskCanceller(redis, keys, settings.completed_ttl_seconds, group=settings.group)
    result = await canceller.cancel(task_id)
    assert result.outcome is CancelOutcome.CONFLICT and result.state == "queued"
    assert "where its entry is was not recorded" in result.refusal
    assert await redis.xlen(keys.family("normal").stream) == 1
    await producer.aclose()


async def test_a_promoted_scheduled_task_can_still_be_cancelled_until_read(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Promotion turns 'scheduled' into 'queued' with the new entry's place; a retry waiting
    # out its backoff keeps 'retrying' (a retry is not cancellable).
    from streamworker.cancel import CancelOutcome, TaskCanceller

    keys, broker, family, _ = await _broker_on_normal(settings, redis)
    producer = Producer.from_settings(settings)
    parked = await producer.publish("job", {}, delay=0.05)
    assert await status_is(redis, settings, parked, "scheduled")
    await redis.zadd(family.delayed, {pack_fields({"task_id": "r1", "task_type": "job"}): 1})
    await redis.hset(keys.status("r1"), mapping={"status": "retrying", "task_id": "r1"})
    await anyio.sleep(0.1)
    assert await broker.promote_due(int(time.time() * 1000)) == 2
    entries = {f[b"task_id"].decode(): i for i, f in await redis.xrange(family.stream)}
    row = await redis.hgetall(keys.status(parked))
    assert row[b"status"] == b"queued" and row[b"entry_id"] == entries[parked]
    assert row[b"stream"] == family.stream.encode()
    assert await status_is(redis, settings, "r1", "retrying")
    canceller = TaskCanceller(redis, keys, settings.completed_ttl_seconds, group=settings.group)
    assert (await canceller.cancel(parked)).outcome is CancelOutcome.CANCELLED
    assert (await canceller.cancel("r1")).outcome is CancelOutcome.CONFLICT
    assert [f[b"task_id"] for _, f in await redis.xrange(family.stream)] == [b"r1"]
    assert await redis.xlen(family.stream) == 1
    await producer.aclose()


async def test_the_gate_writes_running_rows_for_raw_entries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # The start gate (Redis Cluster; here on one node, which it works on as well): raw
    # entries (no status hash yet) with a task_id, without one, one naming a scheduled_for
    # time in the past, and one naming fields twice (the last value counts, as in the
    # worker's field dict).
    keys = Keyspace(settings.prefix)
    status = StatusStore(keys, settings.completed_ttl_seconds)
    stream = keys.family("high").stream
    index = keys.families.index(keys.family("high"))
    broker = Broker(redis, keys, settings.group, status=status)
    await broker.load_scripts()
    await broker.ensure_groups()
    for fields in (
        {"task_id": "raw-1", "task_type": "job", "payload": "{}",
         "created_at": "2026-01-01T00:00:00Z"},
        {"task_type": "job", "payload": "{}"},
        {"task_id": "raw-3", "task_type": "job", "payload": "{}", "retry_count": "2",
         "scheduled_for": "2020-01-01T00:00:00Z"},
    ):  # fmt: skip
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
    await redis.execute_command(
        "XADD", stream, "*", "task_id", "raw-4", "task_type", "old", "payload", "{}",
        "retry_count", "1", "task_type", "job", "retry_count", "3",
    )  # fmt: skip
    at = "2026-01-02T00:00:00.000Z"
    deliveries = await broker.read(settings.consumer, 4, [index], [4], [">"])
    await broker.begin(deliveries, at)
    assert all(d.gated or not d.task_id_field for d in deliveries)
    assert not any(d.cancelled for d in deliveries)
    rows = [await redis.hgetall(keys.status(i)) for i in ("raw-1", "raw-3", "raw-4")]
    assert await redis.ttl(keys.status("raw-1")) == -1
    assert rows[0][b"status"] == b"running" and rows[0][b"started_at"] == at.encode()
    assert rows[0][b"priority"] == b"high" and rows[0][b"retry_count"] == b"0"
    assert rows[1][b"retry_count"] == b"2"  # due already: begin marked it running
    assert rows[2][b"task_type"] == b"job" and rows[2][b"retry_count"] == b"3"


async def test_the_gate_reads_the_status_first(settings: Settings, redis: aioredis.Redis) -> None:
    # A status says whether the task was cancelled; only a task without one (its hash
    # expired while it waited) has its cancel marker looked up. A repeated delivery of a
    # task that already finished loses the terminal state's TTL when it is marked running;
    # a queued task never had one. (The cluster's cancel marks these and leaves the entry.)
    keys = Keyspace(settings.prefix)
    producer = Producer.from_settings(settings)
    queued, cancelled, expired, finished = await producer.publish_many(
        [TaskSpec(task_type="job", payload={}) for _ in range(4)]
    )
    await redis.hset(keys.status(cancelled), "status", "cancelled")
    await redis.delete(keys.status(expired))
    await redis.set(keys.cancelled(expired), "1", ex=60)
    await redis.hset(keys.status(finished), "status", "completed")
    await redis.expire(keys.status(finished), 60)
    _, broker, _, index = await _broker_on_normal(settings, redis)
    at = "2026-01-01T00:00:00.000Z"
    deliveries = await broker.read(settings.consumer, 4, [index], [4], [">"])
    await broker.begin(deliveries, at)
    assert [d.cancelled for d in deliveries] == [False, True, True, False]
    for task_id in (queued, finished):
        status = await producer.status.read(redis, task_id)
        assert status is not None and status.status == "running" and status.started_at == at
        assert status.task_type == "job"  # the publish's fields are kept
        assert await redis.ttl(keys.status(task_id)) == -1
    assert not await redis.exists(keys.status(expired))  # skipped: nothing written
    await producer.aclose()


async def test_long_tasks_show_running_and_raw_entries_get_their_whole_status(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Without a start gate, 'running' is written for a task that has run for a while (short
    # ones go from 'queued' to their outcome, which carries started_at). An entry naming its
    # own task_id with no status yet gets the fields the publish would have written.
    keys = Keyspace(settings.prefix)
    release = anyio.Event()
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        if payload.get("slow"):
            await release.wait()

    producer = Producer.from_settings(settings)
    slow = await producer.publish("job", {"slow": True}, priority="high")
    stream = keys.family("low").stream
    await redis.xadd(
        stream,
        {
            "task_id": "raw-1",
            "task_type": "job",
            "payload": "{}",
            "created_at": "2026-01-01T00:00:00Z",
        },
    )
    async with running_worker(settings, registry) as worker:
        await wait_for(lambda: status_is(redis, settings, "raw-1", "completed"))
        await wait_for(lambda: status_is(redis, settings, slow, "running"))
        running = await producer.status.read(redis, slow)
        assert running is not None and running.started_at and running.task_type == "job"
        release.set()
        await wait_for(lambda: status_is(redis, settings, slow, "completed"))
        assert worker.running_status is not None and worker.running_status.written == 1
    done = await producer.status.read(redis, slow)
    assert done is not None and done.started_at == running.started_at and done.completed_at
    raw = await producer.status.read(redis, "raw-1")
    assert raw is not None
    assert (raw.task_type, raw.priority, raw.created_at, raw.retry_count) == (
        "job", "low", "2026-01-01T00:00:00Z", 0,
    )  # fmt: skip
    assert raw.started_at and raw.completed_at
    assert await redis.ttl(keys.status("raw-1")) > 0
    await producer.aclose()


async def _broker_on_normal(
    settings: Settings, redis: aioredis.Redis
) -> tuple[Keyspace, Broker, StreamFamily, int]:
    """A broker with its scripts and groups, and the normal family with its index."""
    keys = Keyspace(settings.prefix)
    broker = Broker(redis, keys, settings.group, status=StatusStore(keys, 60))
    await broker.load_scripts()
    await broker.ensure_groups()
    family = keys.family("normal")
    return keys, broker, family, keys.families.index(family)


async def test_settling_removes_the_acknowledged_entries_and_no_other(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # ack_delete.lua trims what lies below the first pending entry and deletes the rest of
    # what it acknowledged one by one. Ids are compared as numbers: "10-1" comes after
    # "9-10", and "9-100" after "9-10".
    keys, broker, family, index = await _broker_on_normal(settings, redis)
    ids = [
        f"{ms}-{seq}".encode() for ms in (9, 10, 99, 100, 1000) for seq in (1, 2, 9, 10, 100, 101)
    ]
    for entry_id in ids:
        await redis.xadd(family.stream, {"task_type": "job", "payload": "{}"}, id=entry_id)

    async def left() -> list[bytes]:
        return [entry_id for entry_id, _ in await redis.xrange(family.stream)]

    read = [d.entry_id for d in await broker.read(settings.consumer, 20, [index], [20], [">"])]
    assert read == ids[:20]
    # Entry 3 ("9-10") still runs; those before and after it finished, newest first.
    await broker.settle(Settlement({index: [i for i in reversed(read) if i != ids[3]]}))
    assert await left() == [ids[3], *ids[20:]]  # the running one and the unread ones stay
    assert await pending_ids(redis, family.stream, settings.group) == [ids[3]]

    # nothing pending: up to the last delivered goes
    await broker.settle(Settlement({index: [ids[3]]}))
    assert await left() == ids[20:]

    rest = [d.entry_id for d in await broker.read(settings.consumer, 20, [index], [20], [">"])]
    await redis.script_flush()  # Redis lost its scripts (a restart): settling loads them again
    done = Delivery(index, rest[0], {b"task_id": b"t1", b"task_type": b"job"}, 1.8e9)
    settlement = Settlement({index: rest[:3]}, [], {"t1": done}, "2026-11-23T00:00:00.000Z")
    await broker.settle(settlement)
    assert await left() == rest[3:]
    row = await redis.hgetall(keys.status("t1"))
    assert row[b"status"] == b"completed" and row[b"started_at"] == format_time(1.8e9).encode()
    # No status before (a raw entry's own task_id): the rest, from the entry, for the acker.
    assert settlement.new_statuses == ["t1"]
    assert broker.new_status_rows(settlement) == [
        (
            "t1",
            "completed",
            {"task_type": "job", "priority": "normal", "created_at": None, "retry_count": "0"},
        )
    ]
    await broker.settle(Settlement({index: rest[3:]}))  # the last delivered one goes too
    assert await left() == []
    assert await pending_ids(redis, family.stream, settings.group) == []

    await redis.delete(family.stream)  # deleted under the worker: settling still succeeds
    await broker.settle(Settlement({index: [ids[0]]}))
    assert await redis.exists(family.stream) == 0


async def test_a_read_carries_the_previous_batch_acks_and_statuses(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # One round trip: the settlement's commands go first, then the read. What Redis refused
    # is reported (done is False) for the acker to send again; the read is still returned.
    keys, broker, family, index = await _broker_on_normal(settings, redis)
    for n in range(6):
        await redis.xadd(family.stream, {"task_type": "job", "payload": "{}", "n": str(n)})

    async def read(settle: Settlement | None) -> list[bytes]:
        got = await broker.read(settings.consumer, 2, [index], [2], [">"], settle=settle)
        return [d.entry_id for d in got]

    first = await read(None)
    at = "2026-11-23T00:00:00.000Z"
    done = Delivery(index, first[0], {b"task_id": b"t1", b"task_type": b"job"}, 1.8e9)
    settle = Settlement({index: first}, [], {"t1": done}, at)
    second = await read(settle)
    assert settle.done
    assert len(second) == 2 and not set(first) & set(second)
    assert await pending_ids(redis, family.stream, settings.group) == second
    assert await redis.hget(keys.status("t1"), "status") == b"completed"
    assert settle.new_statuses == ["t1"]  # for the acker to write the rest

    await redis.script_flush()  # Redis lost its scripts: loaded again, everything resent
    settle = Settlement({index: second})
    third = await read(settle)
    assert settle.done and len(third) == 2
    assert await pending_ids(redis, family.stream, settings.group) == third

    await redis.set(keys.status("t2"), "not a hash")  # a status write Redis refuses
    settle = Settlement({index: third}, [], {"t2": done}, at)
    assert await read(settle) == []  # nothing left to read; the read itself went through
    assert not settle.done  # so the acker sends this batch again on its own
    assert await pending_ids(redis, family.stream, settings.group) == []  # acks ran first


async def pending_ids(redis: aioredis.Redis, stream: str, group: str) -> list[bytes]:
    pending = await redis.xpending_range(stream, group, "-", "+", 100)
    return [p["message_id"] for p in pending]
