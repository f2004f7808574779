"""The engine end to end against the real redis-server: publish, run, ack, retry, dead letter."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from streamworker import (
    Defer,
    PermanentError,
    Producer,
    Registry,
    Retry,
    Settings,
    TaskContext,
    TaskSpec,
)
from streamworker.hooks import TaskHooks
from streamworker.keyspace import Keyspace
from streamworker.observability import build_observability
from tests.conftest import dead_letters, running_worker, status_is, wait_for, xlen_is

pytestmark = pytest.mark.anyio


class Note(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    n: int = 0


def producer_for(settings: Settings, registry: Registry | None = None) -> Producer:
    return Producer.from_settings(settings, contracts=registry.contracts if registry else None)


async def test_raw_xadd_from_any_producer_is_processed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    seen: list[tuple[str, Any]] = []
    registry = Registry()

    @registry.handler("care_alert")
    async def care_alert(payload: dict[str, Any], ctx: TaskContext) -> None:
        seen.append((ctx.task_id, payload))

    stream = f"{settings.prefix}high_priority_tasks"
    # Exactly what the contract's redis-cli example sends: no task_id, no other fields.
    await redis.execute_command(
        "XADD",
        stream,
        "*",
        "task_type",
        "care_alert",
        "payload",
        '{"patient_ref":"p-1","alert":"fall"}',
    )
    async with running_worker(settings, registry):
        await wait_for(lambda: len(seen) == 1)
        await wait_for(lambda: xlen_is(redis, stream, 0))
    assert seen[0][1] == {"patient_ref": "p-1", "alert": "fall"}
    assert len(seen[0][0]) == 36  # a derived UUID
    assert await redis.xlen(stream) == 0  # acknowledged and deleted
    assert await redis.xpending(stream, settings.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_contract_payload_and_status(settings: Settings, redis: aioredis.Redis) -> None:
    got: list[Note] = []
    registry = Registry()

    @registry.handler("note", contract=Note)
    async def note(payload: Note, ctx: TaskContext) -> None:
        got.append(payload)

    producer = producer_for(settings, registry)
    task_id = await producer.publish("note", {"text": "hi", "n": 2}, correlation_id="c-1")
    assert (await producer.status.read(redis, task_id)).status == "queued"  # type: ignore[union-attr]
    async with running_worker(settings, registry):
        await wait_for(lambda: got)
        await wait_for(lambda: status_is(redis, settings, task_id, "completed"))
    assert got == [Note(text="hi", n=2)]
    status = await producer.status.read(redis, task_id)
    assert status is not None and status.started_at and status.completed_at
    assert (
        0
        < await redis.ttl(Keyspace(settings.prefix).status(task_id))
        <= settings.completed_ttl_seconds
    )
    await producer.aclose()


async def test_strict_priority_drains_critical_before_low(
    settings: Settings, redis: aioredis.Redis
) -> None:
    order: list[str] = []
    registry = Registry()

    @registry.handler("p")
    async def p(payload: dict[str, Any], ctx: TaskContext) -> None:
        order.append(ctx.priority)

    producer = producer_for(settings)
    for priority in ("low", "normal", "high", "critical"):
        await producer.publish_many([_spec("p", priority) for _ in range(50)])
    async with running_worker(settings.with_overrides(worker_count=1), registry):
        await wait_for(lambda: len(order) == 200)
    assert order == ["critical"] * 50 + ["high"] * 50 + ["normal"] * 50 + ["low"] * 50
    await producer.aclose()


async def test_weighted_mode_makes_progress_on_low(
    settings: Settings, redis: aioredis.Redis
) -> None:
    order: list[str] = []
    registry = Registry()

    @registry.handler("p")
    async def p(payload: dict[str, Any], ctx: TaskContext) -> None:
        order.append(ctx.priority)

    producer = producer_for(settings)
    for priority in ("critical", "low"):
        await producer.publish_many([_spec("p", priority) for _ in range(200)])
    weighted = settings.with_overrides(
        worker_count=1, priority_mode="weighted", priority_weights=(4, 3, 2, 1)
    )
    async with running_worker(weighted, registry):
        await wait_for(lambda: len(order) == 400)
    first_half = order[:200]
    # Strict mode would run all 200 critical first; weighted serves low about 1 in 5 times.
    assert 10 < first_half.count("low") < 100
    await producer.aclose()


def _spec(task_type: str, priority: str, payload: dict[str, Any] | None = None) -> Any:
    from streamworker import TaskSpec

    return TaskSpec(task_type=task_type, payload=payload or {}, priority=priority)


async def test_retry_backoff_grows_then_succeeds(settings: Settings, redis: aioredis.Redis) -> None:
    runs: list[float] = []
    registry = Registry()

    @registry.handler("flaky")
    async def flaky(payload: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(time.monotonic())
        if ctx.attempt < 3:
            raise RuntimeError("not yet")

    s = settings.with_overrides(retry_base_seconds=0.3, retry_jitter="equal")
    producer = producer_for(s)
    task_id = await producer.publish("flaky", {})
    async with running_worker(s, registry):
        await wait_for(lambda: status_is(redis, settings, task_id, "completed"))
    assert len(runs) == 3
    first_gap, second_gap = runs[1] - runs[0], runs[2] - runs[1]
    # equal jitter: 1st wait in [0.15, 0.3] s, 2nd in [0.3, 0.6] s (plus promotion slack)
    assert first_gap >= 0.15 and second_gap >= 0.3
    assert second_gap > first_gap
    status = await producer.status.read(redis, task_id)
    assert status is not None and status.retry_count == 2
    await producer.aclose()


async def test_retry_after_is_honoured(settings: Settings, redis: aioredis.Redis) -> None:
    runs: list[float] = []
    registry = Registry()

    @registry.handler("later")
    async def later(payload: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(time.monotonic())
        if ctx.attempt == 1:
            raise Retry(after=0.8)

    producer = producer_for(settings)
    await producer.publish("later", {})
    async with running_worker(settings, registry):
        await wait_for(lambda: len(runs) == 2)
    assert runs[1] - runs[0] >= 0.8
    await producer.aclose()


async def test_defer_postpones_without_using_a_retry(
    settings: Settings, redis: aioredis.Redis
) -> None:
    attempts: list[int] = []
    registry = Registry()

    @registry.handler("breaker_open", max_retries=0)
    async def breaker_open(payload: dict[str, Any], ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) < 4:
            raise Defer(after=0.05, reason="circuit open")

    producer = producer_for(settings)
    task_id = await producer.publish("breaker_open", {})
    async with running_worker(settings, registry):
        await wait_for(lambda: len(attempts) == 4)
        await wait_for(lambda: status_is(redis, settings, task_id, "completed"))
    # Deferred three times with max_retries=0, yet never dead-lettered: no retry was used.
    assert attempts == [1, 1, 1, 1]
    assert await dead_letters(redis, settings) == []
    await producer.aclose()


async def test_permanent_failure_goes_to_failed_tasks_at_once(
    settings: Settings, redis: aioredis.Redis
) -> None:
    runs = 0
    registry = Registry()

    @registry.handler("doomed")
    async def doomed(payload: dict[str, Any], ctx: TaskContext) -> None:
        nonlocal runs
        runs += 1
        raise PermanentError("recipient unknown")

    producer = producer_for(settings)
    task_id = await producer.publish("doomed", {"secret": "PHI-MARKER"})
    async with running_worker(settings, registry):
        await wait_for(lambda: status_is(redis, settings, task_id, "failed"))
    assert runs == 1
    [entry] = await dead_letters(redis, settings)
    assert entry["dlq_reason"] == "permanent_failure"
    assert "PHI-MARKER" not in entry["dlq_error"]
    await producer.aclose()


async def test_exhausted_retries_dead_letter_with_provenance(
    settings: Settings, redis: aioredis.Redis
) -> None:
    runs = 0
    registry = Registry()

    @registry.handler("always_fails", max_retries=2)
    async def always_fails(payload: dict[str, Any], ctx: TaskContext) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("boom with PHI-MARKER inside")

    producer = producer_for(settings)
    task_id = await producer.publish("always_fails", {"x": 1}, priority="high")
    async with running_worker(settings, registry):
        await wait_for(lambda: status_is(redis, settings, task_id, "failed"))
    assert runs == 3  # the first attempt and two retries
    [entry] = await dead_letters(redis, settings)
    for field in (
        "task_type",
        "payload",
        "task_id",
        "dlq_reason",
        "dlq_error",
        "source_stream",
        "source_id",
        "group",
        "consumer",
        "deliveries",
        "failed_at",
    ):
        assert entry.get(field), field
    assert entry["dlq_reason"] == "max_retries_exceeded"
    assert entry["task_id"] == task_id and entry["retry_count"] == "2"
    assert entry["source_stream"] == f"{settings.prefix}high_priority_tasks"
    assert entry["group"] == settings.group and entry["consumer"] == settings.consumer
    assert entry["dlq_error"] == "ValueError"  # the class, never the message
    status = await producer.status.read(redis, task_id)
    assert status is not None and status.last_error and "PHI-MARKER" not in status.last_error
    await producer.aclose()


async def test_timeout_cancels_the_handler_and_counts_as_an_attempt(
    settings: Settings, redis: aioredis.Redis
) -> None:
    attempts: list[int] = []
    finished: list[int] = []
    registry = Registry()

    @registry.handler("slow", timeout_seconds=0.2, max_retries=1)
    async def slow(payload: dict[str, Any], ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        await anyio.sleep(30)
        finished.append(ctx.attempt)

    producer = producer_for(settings)
    task_id = await producer.publish("slow", {})
    async with running_worker(settings, registry):
        await wait_for(lambda: status_is(redis, settings, task_id, "failed"))
    assert attempts == [1, 2] and finished == []
    [entry] = await dead_letters(redis, settings)
    assert entry["dlq_reason"] == "max_retries_exceeded"
    assert "timed out" in entry["dlq_error"]
    await producer.aclose()


async def test_contract_violation_and_unknown_type_are_dead_lettered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = Registry()
    ran: list[Note] = []

    @registry.handler("note", contract=Note)
    async def note(payload: Note, ctx: TaskContext) -> None:
        ran.append(payload)

    stream = f"{settings.prefix}normal_priority_tasks"
    await redis.xadd(stream, {"task_type": "note", "payload": '{"text": 5}'})
    await redis.xadd(stream, {"task_type": "nobody_handles_this", "payload": "{}"})
    await redis.xadd(stream, {"task_type": "note", "payload": "[1,2]"})
    await redis.xadd(stream, {"task_type": "note", "payload": '{"text": "ok"}'})
    async with running_worker(settings, registry):
        await wait_for(lambda: ran)
        await wait_for(lambda: _count_dead(redis, settings, 3))
    reasons = sorted(e["dlq_reason"] for e in await dead_letters(redis, settings))
    assert reasons == ["contract_violation", "malformed", "unknown_task_type"]


async def _count_dead(redis: aioredis.Redis, settings: Settings, n: int) -> bool:
    return await redis.xlen(Keyspace(settings.prefix).dead_letters) == n


async def test_producer_refuses_bad_tasks_before_writing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    from streamworker import InvalidTask

    registry = Registry()

    @registry.handler("note", contract=Note)
    async def note(payload: Note, ctx: TaskContext) -> None:
        return None

    producer = Producer.from_settings(
        settings, contracts=registry.contracts, require_known_type=True
    )
    cases: list[tuple[str, Any, dict[str, Any], str]] = [
        ("note", {"text": 1}, {}, "text"),
        ("note", {"n": 1}, {}, "text"),
        ("nope", {}, {}, "unknown task type"),
        ("note", {"text": "a"}, {"priority": "urgent"}, "priority"),
        ("note", {"text": "a"}, {"max_retries": -1}, "max_retries"),
        ("note", {"text": "a"}, {"timeout_seconds": 0}, "timeout_seconds"),
        ("note", {"text": "a"}, {"scheduled_for": "soon"}, "scheduled_for"),
        ("note", {"text": "a"}, {"delay": 1, "scheduled_for": "2030-01-01T00:00:00Z"}, "either"),
        ("note", {"text": "x" * 2_000_000}, {}, "limit"),
    ]
    for task_type, payload, options, needle in cases:
        with pytest.raises(InvalidTask, match=needle):
            await producer.publish(task_type, payload, **options)
    keys = Keyspace(settings.prefix)
    assert sum([await redis.xlen(f.stream) for f in keys.families]) == 0
    await producer.aclose()


async def test_idempotency_key_publishes_once(settings: Settings, redis: aioredis.Redis) -> None:
    producer = producer_for(settings)
    ids = []
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            ids.append(await producer.publish("x", {}, idempotency_key="order-42"))

        for _ in range(10):
            tg.start_soon(go)
    assert len(set(ids)) == 1
    assert await redis.xlen(f"{settings.prefix}normal_priority_tasks") == 1
    await producer.aclose()


async def test_running_status_is_complete_for_published_and_raw_entries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # The start gate writes only status and started_at over a hash the publish wrote, and the
    # whole row for an entry published with raw XADD (no hash yet).
    release = anyio.Event()
    registry = Registry()

    @registry.handler("hold")
    async def hold(payload: dict[str, Any], ctx: TaskContext) -> None:
        await release.wait()

    keys = Keyspace(settings.prefix)
    producer = Producer.from_settings(settings)
    published = await producer.publish("hold", {}, priority="high")
    await producer.aclose()
    await redis.xadd(
        keys.family("low").stream,
        {"task_type": "hold", "payload": "{}", "task_id": "raw-1", "retry_count": "2"},
    )
    async with running_worker(settings, registry):
        await wait_for(lambda: status_is(redis, settings, published, "running"))
        await wait_for(lambda: status_is(redis, settings, "raw-1", "running"))
        for task_id, priority, retries in ((published, "high", "0"), ("raw-1", "low", "2")):
            raw = await redis.hgetall(keys.status(task_id))
            row = {k.decode(): v.decode() for k, v in raw.items()}
            assert row["task_id"] == task_id and row["task_type"] == "hold"
            assert row["priority"] == priority and row["retry_count"] == retries
            assert row["started_at"]
        release.set()
        await wait_for(lambda: status_is(redis, settings, "raw-1", "completed"))


async def test_a_busy_worker_sends_its_acks_and_statuses_with_its_reads(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Under load the acker's batches ride on the reader's next read (one round trip instead
    # of two); every entry is still acknowledged and deleted once, with its final status.
    registry = Registry()
    done: list[str] = []

    @registry.handler("quick")
    async def quick(payload: dict[str, Any], ctx: TaskContext) -> None:
        done.append(ctx.task_id)

    producer = producer_for(settings)
    ids = await producer.publish_many(
        [TaskSpec(task_type="quick", payload={"n": n}) for n in range(3000)]
    )
    await producer.aclose()
    stream = f"{settings.prefix}normal_priority_tasks"
    async with running_worker(settings, registry, concurrency=16) as worker:
        await wait_for(lambda: xlen_is(redis, stream, 0))
        assert worker.acker.settled_with_reads > 0
    assert sorted(done) == sorted(ids)  # each ran once
    assert await redis.xpending(stream, settings.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    for task_id in ids[::300]:
        assert await status_is(redis, settings, task_id, "completed")


class _Wait:
    """A hook that records the ``enqueued_at`` its ``before`` is given."""

    def __init__(self, uses_enqueued_at: bool) -> None:
        self.uses_enqueued_at = uses_enqueued_at
        self.seen: list[tuple[float, float]] = []

    def before(self, task: Any, started_at: float, enqueued_at: float) -> None:
        self.seen.append((started_at, enqueued_at))

    def after(self, task: Any, token: Any, end: Any) -> None:
        pass

    def rejected(self, rejected: Any, priority: str) -> None:
        pass


async def test_hooks_get_the_enqueue_time_unless_none_reads_it(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Working the enqueue time out of the entry id costs 2,500 instructions a task, so it is
    # only done when a hook reads it; one that says it does not gets NaN.
    registry = Registry()

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        pass

    producer = producer_for(settings)
    for uses in (True, False):
        hook = _Wait(uses)
        published = time.time()
        task_id = await producer.publish("job", {})
        async with running_worker(settings, registry, hooks=[hook]):
            await wait_for(lambda t=task_id: status_is(redis, settings, t, "completed"))
        ((started_at, enqueued_at),) = hook.seen
        if uses:
            assert published - 1 <= enqueued_at <= started_at
        else:
            assert enqueued_at != enqueued_at  # NaN
    # A hook that does not say is given it; the library's own hooks say what they need.
    silent = _Wait(False)
    del silent.uses_enqueued_at
    assert TaskHooks([_Wait(False), silent]).uses_enqueued_at
    assert not TaskHooks([_Wait(False)]).uses_enqueued_at
    with caplog.at_level(logging.INFO, logger="streamworker.task"):  # debug would need it
        assert not TaskHooks(build_observability(settings).task_hooks).uses_enqueued_at
    await producer.aclose()
