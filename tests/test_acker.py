"""The acker's queue: completions are batched, a full queue makes runners wait (never drops an
ack), in-order operations run after what was queued before them, and closing flushes the rest."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from streamworker.worker.acker import Acker

pytestmark = pytest.mark.anyio


class _Broker:
    """Records what the acker settles; ``gate`` holds settles back while it is unset."""

    status = type("Status", (), {"enabled": True})()

    def __init__(self) -> None:
        self.settled: list[list[bytes]] = []
        self.gate = anyio.Event()

    async def settle(self, acks: dict[int, list[bytes]], writes: Any) -> None:
        await self.gate.wait()
        self.settled.append([entry for ids in acks.values() for entry in ids])


async def test_a_full_queue_makes_runners_wait_and_nothing_is_lost() -> None:
    broker = _Broker()
    acker = Acker(broker, capacity=4)  # type: ignore[arg-type]
    order: list[str] = []

    async def runner(n: int) -> None:
        await acker.complete(0, f"{n}-0".encode(), f"t{n}", {})

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
        await acker.complete(0, b"11-0", "t11", {})


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
        assert acker.complete_nowait(0, b"0-0", "t0", {})
        await anyio.wait_all_tasks_blocked()  # the acker holds entry 0, blocked in settle
        assert [acker.complete_nowait(0, f"{n}-0".encode(), f"t{n}", {}) for n in (1, 2, 3, 4)] == [
            True,
            True,
            True,
            False,
        ]
        assert len(acker._queue) == 3
        tg.start_soon(acker.complete, 0, b"4-0", "t4", {})  # what the runner does then
        await anyio.wait_all_tasks_blocked()
        broker.gate.set()
        await anyio.wait_all_tasks_blocked()
        acker.close()
    assert sorted(e for batch in broker.settled for e in batch) == [
        f"{n}-0".encode() for n in range(5)
    ]
