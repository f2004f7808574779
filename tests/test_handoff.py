"""The reader→runner hand-off: every delivery reaches exactly one runner, closing ends idle
runners only after what is queued has been taken, and a cancelled idle runner never swallows a
wake-up meant for work."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import pytest

from streamworker.wire import Delivery
from streamworker.worker.handoff import Handoff
from streamworker.worker.reader import Slots, hand_over

pytestmark = pytest.mark.anyio


def delivery(n: int) -> Delivery:
    return Delivery(0, f"{n}-0".encode(), {b"task_type": b"t"}, 0.0)


async def test_each_delivery_reaches_one_runner_and_closing_ends_them() -> None:
    handoff = Handoff()
    feed = handoff.feed()
    taken: list[bytes] = []
    ended = 0

    async def runner() -> None:
        nonlocal ended
        while True:
            try:
                item = await handoff.take()
            except anyio.EndOfStream:
                ended += 1
                return
            taken.append(item.entry_id)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(runner)
        await anyio.wait_all_tasks_blocked()
        for n in range(50):
            await feed.send(delivery(n))
        for n in range(50, 60):  # queued while nobody is idle: still taken before the end
            await feed.send(delivery(n))
        feed.close()
        feed.close()  # idempotent
    assert sorted(taken) == sorted(f"{n}-0".encode() for n in range(60))
    assert ended == 4
    with pytest.raises(anyio.ClosedResourceError):
        await feed.send(delivery(99))


async def test_the_handoff_stays_open_until_every_feed_is_closed() -> None:
    handoff = Handoff()
    first, second = handoff.feed(), handoff.feed()
    first.close()
    await second.send(delivery(1))
    assert (await handoff.take()).entry_id == b"1-0"
    second.close()
    with pytest.raises(anyio.EndOfStream):
        await handoff.take()


async def test_a_cancelled_idle_runner_never_holds_up_a_delivery() -> None:
    handoff = Handoff()
    feed = handoff.feed()
    got: list[bytes] = []

    async def runner(scope_box: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scope_box.append(scope)
            with contextlib.suppress(anyio.EndOfStream):
                got.append((await handoff.take()).entry_id)

    doomed: list[anyio.CancelScope] = []
    survivor: list[anyio.CancelScope] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner, doomed)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(runner, survivor)
        await anyio.wait_all_tasks_blocked()
        # The first idle runner is cancelled, and woken for this delivery before it has run
        # (and taken its wake-up event out of the queue of idle runners).
        doomed[0].cancel()
        await feed.send(delivery(7))
        await anyio.wait_all_tasks_blocked()
        assert got == [b"7-0"]  # taken by the other runner, not left waiting in the queue
        feed.close()
    assert len(handoff) == 0


async def test_a_runner_cancelled_after_its_wake_up_passes_the_wake_up_on() -> None:
    handoff = Handoff()
    feed = handoff.feed()
    got: list[bytes] = []
    tasks: list[asyncio.Task[Any]] = []

    async def runner() -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(asyncio.CancelledError, anyio.EndOfStream):
            got.append((await handoff.take()).entry_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(runner)
        await anyio.wait_all_tasks_blocked()
        await feed.send(delivery(8))  # wakes the first runner...
        tasks[0].cancel()  # ...which is cancelled (natively) before it runs
        await anyio.wait_all_tasks_blocked()
        assert got == [b"8-0"]  # the second runner took it
        feed.close()


async def test_runners_are_woken_only_as_their_handlers_wait() -> None:
    # A runner whose task finishes without waiting takes the next delivery itself; another
    # runner is woken only to stand by, so a batch costs a couple of wake-ups, not one each.
    handoff = Handoff()
    feed = handoff.feed()
    taken_by: dict[int, int] = {}

    async def runner(n: int) -> None:
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                await handoff.take()
                taken_by[n] = taken_by.get(n, 0) + 1

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(runner, n)
        await anyio.wait_all_tasks_blocked()
        for n in range(50):
            await feed.send(delivery(n))
        await anyio.wait_all_tasks_blocked()
        assert sum(taken_by.values()) == 50
        assert len(taken_by) == 1  # one runner ran them all; the one on standby found none
        feed.close()


async def test_a_waiting_handler_never_holds_up_the_deliveries_behind_it() -> None:
    handoff = Handoff()
    feed = handoff.feed()
    release = anyio.Event()
    running: list[bytes] = []

    async def runner() -> None:
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                item = await handoff.take()
                running.append(item.entry_id)
                await release.wait()  # a handler waiting on I/O

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(runner)
        await anyio.wait_all_tasks_blocked()
        for n in range(6):
            await feed.send(delivery(n))
        await anyio.wait_all_tasks_blocked()
        # Each waiting handler's runner handed the next delivery on: all four run at once.
        assert running == [f"{n}-0".encode() for n in range(4)]
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert len(running) == 6
        feed.close()


@pytest.mark.parametrize(
    ("size", "free", "paused_after", "eager"),
    [
        (4, 0, None, False),  # small: one piece, and the runners start before the next read
        (8, 0, 4, True),  # no free slot: half first, so the next read has some to fill
        (9, 0, 4, True),
        (40, 20, 12, True),  # up to half the slots free for the next read (20 + 12 = 32)
        (40, 32, None, True),  # half the slots free already: read for them at once
    ],
)
async def test_the_reader_hands_a_batch_over_for_the_next_read_to_overlap(
    size: int, free: int, paused_after: int | None, eager: bool
) -> None:
    # Between the parts the runners get to run (and free slots for the next read); a small
    # batch goes in one piece. Here a task that is ready to run marks where the pause fell.
    events: list[str] = []
    slots = Slots(64)
    await slots.take_batch(64 - free)

    class Recorder:
        def send_many(self, items: list[Delivery]) -> None:
            events.extend(item.entry_id.decode() for item in items)

    async def ready() -> None:
        events.append("pause")

    async with anyio.create_task_group() as tg:
        tg.start_soon(ready)
        read_at_once = await hand_over(Recorder(), [delivery(n) for n in range(size)], slots)  # type: ignore[arg-type]
    assert read_at_once is eager
    sent = [e for e in events if e != "pause"]
    assert sent == [f"{n}-0" for n in range(size)]
    assert events.index("pause") == (size if paused_after is None else paused_after)
