"""Handler slots: a feeder takes up to the free count, waits when none is free, and is woken
when runners give slots back; a cancelled wait leaves the count as it was."""

from __future__ import annotations

import anyio
import pytest

from streamworker.worker.reader import Slots

pytestmark = pytest.mark.anyio


async def test_a_batch_takes_what_is_free_up_to_its_limit() -> None:
    slots = Slots(5)
    assert await slots.take_batch(3) == 3
    assert slots.free == 2
    assert await slots.take_batch(10) == 2
    assert slots.free == 0
    slots.give(4)
    assert await slots.take_batch(10, eager=True) == 4
    assert slots.free == 0


async def test_a_feeder_waits_for_a_slot_and_is_woken_by_a_give() -> None:
    slots = Slots(2)
    await slots.take_batch(2)
    got: list[int] = []

    async def feeder() -> None:
        got.append(await slots.take_batch(10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(feeder)
        await anyio.wait_all_tasks_blocked()
        assert got == []  # none free: it waits
        slots.give()
        slots.give()  # both before it runs again: it takes both
    assert got == [2]
    assert slots.free == 0


async def test_every_waiting_feeder_is_woken_and_none_takes_more_than_is_free() -> None:
    slots = Slots(3)
    await slots.take_batch(3)
    got: list[int] = []

    async def feeder() -> None:
        got.append(await slots.take_batch(10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(feeder)
        tg.start_soon(feeder)
        await anyio.wait_all_tasks_blocked()
        slots.give()  # one slot, two waiters: one takes it, the other waits again
        await anyio.wait_all_tasks_blocked()
        assert got == [1]
        slots.give(2)
    assert got == [1, 2]
    assert slots.free == 0


async def test_a_cancelled_wait_takes_nothing() -> None:
    slots = Slots(1)
    await slots.take()
    with anyio.move_on_after(0.01):
        await slots.take()
    with anyio.move_on_after(0.01):
        await slots.take_batch(5)
    assert slots.free == 0
    assert not slots._waiters  # nothing left behind to wake
    slots.give()
    assert slots.free == 1
    assert await slots.take_batch(5) == 1


async def test_slots_given_back_go_to_the_waiters_in_turn_so_none_is_starved() -> None:
    # Two feeders (say the readers of two partitions) wait; slots come back one by one and
    # the feeder that would take them all eagerly gets none of those already handed over.
    slots = Slots(2)
    await slots.take_batch(2)
    got: list[tuple[str, int]] = []

    async def feeder(name: str) -> None:
        got.append((name, await slots.take_batch(10)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(feeder, "a")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(feeder, "b")
        await anyio.wait_all_tasks_blocked()
        slots.give()
        slots.give()
        assert slots.free == 0  # both handed over: nothing left for an eager taker
    assert got == [("a", 1), ("b", 1)]
    assert slots.free == 0


async def test_a_slot_handed_to_a_waiter_that_is_cancelled_is_never_lost() -> None:
    slots = Slots(1)
    await slots.take()
    got: list[int] = []

    async def feeder(scope: anyio.CancelScope) -> None:
        with scope:
            got.append(await slots.take_batch(10))

    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()
        tg.start_soon(feeder, scope)
        await anyio.wait_all_tasks_blocked()
        slots.give()  # handed to the feeder...
        scope.cancel()  # ...which is cancelled before it runs
    # anyio lets a task whose wait is already over resume, so the feeder keeps the slot (a
    # plain asyncio cancellation there would make it pass the slot on): none is lost.
    assert got == [1]
    assert slots.free == 0
    assert not slots._waiters
