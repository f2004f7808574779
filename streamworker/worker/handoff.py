"""Hand-off: deliveries from the feeders (reader, recoverer) to the runner tasks.

A feeder only hands over deliveries it took handler slots for (``Slots``), and there are as
many runner tasks as slots, so the queue here never holds more than ``concurrency`` entries and
needs no bound of its own. A deque costs far less per delivery than a zero-capacity memory
object stream, where every delivery is a rendezvous (a checkpoint in ``send``, a waiter object
and a task switch each); and a runner that finishes a task while another is waiting takes it
without suspending at all.

Wake-ups are chained: while work is queued, exactly one idle runner stands woken. The runner
that takes a delivery wakes the next one only if none is standing by. So when handlers finish
without waiting (a quick task), one runner goes through a whole batch and a batch costs a
couple of wake-ups instead of one per delivery. When a handler waits (on I/O), the runner
standing by runs and takes the next delivery, so nothing queued waits behind it.

Closing works like a memory object stream's: once every feed is closed, idle runners get
``EndOfStream``; deliveries still queued are run first.

An idle runner waits on a bare asyncio future rather than an ``anyio.Event`` (which wraps an
``asyncio.Event``, which makes the same future): the worker runs on asyncio anyway (redis-py's
asyncio client), and the wake-up is on every delivery's path. Cancellation works as with any
await: anyio cancels the waiting task, which cancels the future.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from types import TracebackType

import anyio

from ..wire import Delivery

__all__ = ["Feed", "Handoff"]


class Handoff:
    def __init__(self) -> None:
        self._queue: deque[Delivery] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()  # one per runner waiting for work
        self._open_feeds = 0
        self._closed = False
        self._waking = 0  # runners woken that have not resumed yet

    def feed(self) -> Feed:
        """A sending end; the hand-off closes when every feed made so far is closed."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._open_feeds += 1
        return Feed(self)

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, delivery: Delivery) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._queue.append(delivery)
        if not self._waking:
            self._wake_one()

    def put_many(self, deliveries: Sequence[Delivery]) -> None:
        """:meth:`put` of each, in order, in one call."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._queue.extend(deliveries)
        if deliveries and not self._waking:
            self._wake_one()

    def take_nowait(self) -> Delivery | None:
        """The next delivery if one is queued, else None: :meth:`take` without the
        coroutine, for a runner's common case under load."""
        queue = self._queue
        if not queue:
            return None
        delivery = queue.popleft()
        if queue and not self._waking:
            # More is queued: have one more runner ready to take it, in case this one's
            # handler waits (chained, so a batch wakes runners only as needed).
            self._wake_one()
        return delivery

    async def take(self) -> Delivery:
        """The next delivery; waits while there is none. ``EndOfStream`` once closed and
        empty."""
        while True:
            delivery = self.take_nowait()
            if delivery is not None:
                return delivery
            if self._closed:
                raise anyio.EndOfStream
            wake = asyncio.get_running_loop().create_future()
            self._idle.append(wake)
            try:
                await wake
            except BaseException:
                if wake.done() and not wake.cancelled():
                    self._waking -= 1
                    self._wake_one()  # the wake-up was meant for work: pass it on
                elif wake in self._idle:
                    self._idle.remove(wake)
                raise
            self._waking -= 1

    def _wake_one(self) -> None:
        idle = self._idle
        while idle and (self._queue or self._closed):
            wake = idle.popleft()
            if not wake.done():  # a cancelled runner's future is done already: skip it
                wake.set_result(None)
                self._waking += 1
                return

    def _feed_closed(self) -> None:
        self._open_feeds -= 1
        if self._open_feeds == 0:
            self._closed = True
            while self._idle:  # every idle runner, to see the end
                self._wake_one()


class Feed:
    """The sending end of a :class:`Handoff` (what the reader and the recoverer hold)."""

    __slots__ = ("_closed", "_handoff")

    def __init__(self, handoff: Handoff) -> None:
        self._handoff = handoff
        self._closed = False

    async def send(self, delivery: Delivery) -> None:
        # No checkpoint: the feeder already waited for the slot this delivery uses.
        self.send_nowait(delivery)

    def send_nowait(self, delivery: Delivery) -> None:
        """:meth:`send` without the coroutine."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._handoff.put(delivery)

    def send_many(self, deliveries: Sequence[Delivery]) -> None:
        """:meth:`send_nowait` of each, in one call (the reader hands over a batch so)."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._handoff.put_many(deliveries)

    def close(self) -> None:
        """Idempotent, like closing a memory object stream."""
        if not self._closed:
            self._closed = True
            self._handoff._feed_closed()

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
