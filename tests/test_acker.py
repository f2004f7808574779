"""The acker's queue: completions are batched, a full queue makes runners wait (never drops an
ack), in-order operations run after what was queued before them, and closing flushes the rest."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from streamworker.broker import Settlement
from streamworker.wire import Delivery
from streamworker.worker.acker import Acker

pytestmark = pytest.mark.anyio


def _d(family_index: int, entry_id: bytes) -> Delivery:
    """A delivery as the reader makes one (what a completion carries: its read time)."""
    return Delivery(family_index, entry_id, {b"task_id": b"t"}, 1_700_000_000.0)


class _Broker:
    """Records what the acker settles; ``gate`` holds settles back while it is unset."""

    status = type("Status", (), {"enabled": True})()

    def __init__(self) -> None:
        self.settled: list[list[bytes]] = []
        self.gate = anyio.Event()

    async def settle(self, settlement: Settlement) -> None:
        await self.gate.wait()
        self.settled.append([entry for ids in settlement.acks.values() for entry in ids])


async def test_a_full_queue_makes_runners_wait_and_nothing_is_lost() -> None:
    broker = _Broker()
    acker = Acker(broker, capacity=4)  # type: ignore[arg-type]
    order: list[str] = []

    async def runner(n: int) -> None:
        await acker.complete(_d(0, f"{n}-0".encode()), f"t{n}")

    async with anyio.create_task_group() as tg:
        await tg.start(acker.run)
        await runner(0)
        await anyio.wait_all_tasks_blocked()  # the acker holds entry 0, blocked in settle
        for n in range(1, 10):
            tg.start_soon(runner, n)
        await anyio.wait_all_tasks_blocked()
        assert len(acker._queue) == 4  # the other five wait for room

        async def in_order() -> None:
            order.append(await acker.run_in_order(_op(order), what="test"))

        tg.start_soon(in_order)
        await anyio.wait_all_tasks_blocked()
        broker.gate.set()
        await anyio.wait_all_tasks_blocked()
        acker.close()
    assert sorted(e for batch in broker.settled for e in batch) == sorted(
        f"{n}-0".encode() for n in range(10)
    )
    assert len(broker.settled) < 10  # batched
    assert order == ["op", "done"]
    assert acker.finished.is_set()
    with pytest.raises(anyio.ClosedResourceError):
        await acker.complete(_d(0, b"11-0"), "t11")


def _op(order: list[str]) -> Any:
    async def op() -> str:
        order.append("op")
        return "done"

    return op


async def test_complete_nowait_queues_when_there_is_room_and_refuses_when_full() -> None:
    # The runner's common case: no coroutine, and a full queue queues nothing (the runner then
    # waits with complete()), so an ack is neither lost nor queued twice.
    broker = _Broker()
    acker = Acker(broker, capacity=3)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(acker.run)
        assert acker.complete_nowait(_d(0, b"0-0"), "t0")
        await anyio.wait_all_tasks_blocked()  # the acker holds entry 0, blocked in settle
        assert [acker.complete_nowait(_d(0, f"{n}-0".encode()), f"t{n}") for n in (1, 2, 3, 4)] == [
            True,
            True,
            True,
            False,
        ]
        assert len(acker._queue) == 3
        tg.start_soon(acker.complete, _d(0, b"4-0"), "t4")  # what the runner does then
        await anyio.wait_all_tasks_blocked()
        broker.gate.set()
        await anyio.wait_all_tasks_blocked()
        acker.close()
    assert sorted(e for batch in broker.settled for e in batch) == [
        f"{n}-0".encode() for n in range(5)
    ]


async def test_a_read_takes_what_is_queued_up_to_an_in_order_operation() -> None:
    broker = _Broker()
    broker.gate.set()
    acker = Acker(broker, capacity=100)  # type: ignore[arg-type]
    assert acker.take_for_read() is None  # nothing queued
    for n in range(3):
        assert acker.complete_nowait(_d(0, f"{n}-0".encode()), f"t{n}")
    order: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: acker.run_in_order(_op(order), what="test"))
        await anyio.wait_all_tasks_blocked()  # queued behind the three, not run
        assert acker.complete_nowait(_d(0, b"3-0"), "t3")
        settlement = acker.take_for_read()
        assert settlement is not None
        assert settlement.acks == {0: [b"0-0", b"1-0", b"2-0"]}
        assert list(settlement.completed) == ["t0", "t1", "t2"] and settlement.writes == []
        assert acker.take_for_read() is None  # one batch on its way at a time

        # While the read carries them, the acker sends nothing of its own (order), ...
        await tg.start(acker.run)
        await anyio.wait_all_tasks_blocked()
        assert broker.settled == [] and order == []
        # ... and once Redis took them, it goes on with the operation and the rest.
        settlement.done = True
        acker.read_done(settlement)
        await anyio.wait_all_tasks_blocked()
        assert order == ["op"]
        assert broker.settled == [[b"3-0"]]
        assert acker.settled_with_reads == 1
        acker.close()


async def test_what_a_failed_read_carried_goes_back_to_the_front_of_the_queue() -> None:
    broker = _Broker()
    broker.gate.set()
    acker = Acker(broker, capacity=100)  # type: ignore[arg-type]
    acker.reads_settle = True
    for n in range(3):
        acker.complete_nowait(_d(0, f"{n}-0".encode()), f"t{n}")
    settlement = acker.take_for_read()
    assert settlement is not None
    acker.complete_nowait(_d(0, b"3-0"), "t3")
    async with anyio.create_task_group() as tg:
        await tg.start(acker.run)
        await anyio.wait_all_tasks_blocked()
        assert broker.settled == []  # waits for the read
        acker.read_done(settlement)  # not done: the read failed
        await anyio.wait_all_tasks_blocked()
        acker.close()
    # the acker sent them itself, in their order, before what came after
    assert [e for batch in broker.settled for e in batch] == [b"0-0", b"1-0", b"2-0", b"3-0"]
    assert acker.settled_with_reads == 0


async def test_a_batch_writes_each_task_once_and_completions_share_one_time() -> None:
    # Completions go as a list of task ids with the batch's one completed_at; a task with
    # another write in the same batch gets one merged write, its last state winning.
    acker = Acker(_Broker(), capacity=100)  # type: ignore[arg-type]
    acker.note_status("raw", "running", {"started_at": "S"})  # a raw entry's first status
    acker.complete_nowait(_d(0, b"1-0"), "raw")
    acker.complete_nowait(_d(0, b"2-0"), "plain")
    acker.complete_nowait(_d(1, b"3-0"), "again")
    acker.note_status("again", "running", {"started_at": "S2"})  # delivered once more
    await acker.discard(0, b"4-0")  # acknowledged, no status
    settlement = acker.take_for_read()
    assert settlement is not None
    at = settlement.completed_at
    assert at.endswith("Z") and len(at) == len("2026-11-23T00:00:00.000Z")
    assert settlement.acks == {0: [b"1-0", b"2-0", b"4-0"], 1: [b"3-0"]}
    assert list(settlement.completed) == ["plain"]
    assert settlement.writes == [
        ("raw", "completed", {"started_at": "S", "completed_at": at}),
        ("again", "running", {"completed_at": at, "started_at": "S2"}),
    ]
