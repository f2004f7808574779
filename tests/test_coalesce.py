"""Group commit of single publishes (coalesce.py): the combining logic on its own, with a
write function that records its batches, then through the producer on the test Redis."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Settings
from streamworker.coalesce import Coalescer
from streamworker.keyspace import Keyspace
from streamworker.producer import Producer

pytestmark = pytest.mark.anyio


class Recorder:
    """A write that records each batch, can be held open, and can fail once."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: anyio.Event | None = None
        self.fail_next = False

    async def write(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("redis went away")
        return [f"id-{item}" for item in items]


async def _until(condition: object) -> None:
    with anyio.fail_after(5):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0)


async def test_a_lone_call_writes_at_once_and_alone() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.write)
    assert await coalescer.submit("a") == "id-a"
    assert await coalescer.submit("b") == "id-b"
    assert rec.batches == [["a"], ["b"]]


async def test_calls_that_arrive_during_a_write_go_together_in_the_next() -> None:
    rec = Recorder()
    gate = rec.gate = anyio.Event()
    coalescer = Coalescer(rec.write)
    results: dict[str, str] = {}

    async def call(item: str) -> None:
        results[item] = await coalescer.submit(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first")
        await _until(lambda: rec.batches)
        for i in range(10):
            tg.start_soon(call, str(i))
        await _until(lambda: len(coalescer._waiting) == 10)
        gate.set()
    assert rec.batches == [["first"], [str(i) for i in range(10)]]
    assert results == {item: f"id-{item}" for item in ["first", *map(str, range(10))]}


async def test_batches_are_capped() -> None:
    rec = Recorder()
    gate = rec.gate = anyio.Event()
    coalescer = Coalescer(rec.write, max_batch=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.submit, "first")
        await _until(lambda: rec.batches)
        for i in range(10):
            tg.start_soon(coalescer.submit, str(i))
        await _until(lambda: len(coalescer._waiting) == 10)
        gate.set()
    assert [len(b) for b in rec.batches] == [1, 4, 4, 2]
    assert [item for b in rec.batches[1:] for item in b] == [str(i) for i in range(10)]


async def test_a_failed_write_fails_each_of_its_callers_and_the_next_call_works() -> None:
    rec = Recorder()
    gate = rec.gate = anyio.Event()
    rec.fail_next = True
    coalescer = Coalescer(rec.write)
    errors: list[str] = []

    async def call(item: str) -> None:
        try:
            await coalescer.submit(item)
        except ConnectionError as exc:
            errors.append(f"{item}: {exc}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first")
        await _until(lambda: rec.batches)
        tg.start_soon(call, "second")
        await _until(lambda: coalescer._waiting)
        # The second call waits for the first write: it goes in the next batch, which works.
        gate.set()
    assert errors == ["first: redis went away"]
    assert rec.batches == [["first"], ["second"]]

    gate = rec.gate = anyio.Event()
    rec.fail_next = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "a")
        await _until(lambda: len(rec.batches) == 3)
        for item in ("b", "c"):
            tg.start_soon(call, item)
        await _until(lambda: len(coalescer._waiting) == 2)
        gate.set()
    assert await coalescer.submit("d") == "id-d"
    assert errors[1:] == ["a: redis went away"]
    assert rec.batches[3:] == [["b", "c"], ["d"]]


async def test_a_caller_cancelled_while_waiting_is_not_written() -> None:
    rec = Recorder()
    gate = rec.gate = anyio.Event()
    coalescer = Coalescer(rec.write)
    got: list[str] = []

    async def call(item: str, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            got.append(await coalescer.submit(item))

    dropped = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first")
        await _until(lambda: rec.batches)
        tg.start_soon(call, "dropped", dropped)
        tg.start_soon(call, "kept")
        await _until(lambda: len(coalescer._waiting) == 2)
        dropped.cancel()
        await anyio.sleep(0)
        gate.set()
    assert rec.batches == [["first"], ["kept"]]
    assert sorted(got) == ["id-first", "id-kept"]


async def test_a_leader_cancelled_mid_write_still_writes_for_the_others() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.write)
    got: list[str] = []
    leader = anyio.CancelScope()

    async def lead() -> None:
        with leader:
            await coalescer.submit("first")
        got.append("leader cancelled" if leader.cancelled_caught else "leader returned")

    async def call(item: str) -> None:
        got.append(await coalescer.submit(item))

    async with anyio.create_task_group() as tg:
        gate = rec.gate = anyio.Event()
        tg.start_soon(lead)
        await _until(lambda: rec.batches)
        tg.start_soon(call, "waiting")
        await _until(lambda: coalescer._waiting)
        leader.cancel()  # the write is shielded: it goes on
        await anyio.sleep(0)
        gate.set()
    # The leader's own write completed (shielded) before its cancellation was delivered.
    assert rec.batches == [["first"], ["waiting"]]
    assert "id-waiting" in got


async def test_a_caller_cancelled_just_as_it_was_made_leader_hands_the_lead_on() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.write)
    got: list[str] = []
    tasks: dict[str, asyncio.Task[object]] = {}

    async def lead() -> None:
        got.append(await coalescer.submit("first"))
        # Still in the tick where the first write returned: "chosen" has been made the next
        # leader but has not run yet. Cancelling it now (a plain asyncio cancel, which lands
        # at once) must not leave "last" waiting forever.
        tasks["chosen"].cancel()

    async def call(item: str) -> None:
        tasks[item] = asyncio.current_task()  # type: ignore[assignment]
        try:
            got.append(await coalescer.submit(item))
        except asyncio.CancelledError:
            got.append(f"{item} cancelled")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            gate = rec.gate = anyio.Event()
            tg.start_soon(lead)
            await _until(lambda: rec.batches)
            tg.start_soon(call, "chosen")
            tg.start_soon(call, "last")
            await _until(lambda: len(coalescer._waiting) == 2)
            gate.set()
    assert rec.batches == [["first"], ["last"]]
    assert sorted(got) == ["chosen cancelled", "id-first", "id-last"]
    assert not coalescer._busy


async def test_concurrent_publishes_share_round_trips_and_each_lands_once(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, redis=redis)
    keys = Keyspace(settings.prefix)
    ids: list[str] = []

    async def publish(i: int) -> None:
        ids.append(await producer.publish("note", {"n": i}, priority=("high", "low")[i % 2]))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(publish, i)
    assert len(set(ids)) == 200
    # Far fewer writes than tasks (the first goes alone; the rest queue behind it).
    assert producer._coalescer.batches < 20
    entries = [
        *await redis.xrange(keys.family("high").stream),
        *await redis.xrange(keys.family("low").stream),
    ]
    assert sorted(fields[b"task_id"].decode() for _, fields in entries) == sorted(ids)
    for task_id in ids:
        assert await redis.hget(keys.status(task_id), "status") == b"queued"
