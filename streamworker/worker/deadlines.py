"""Handler timeouts without a cancel scope and a timer per task.

Each runner task is a *lane*: it runs its handlers inside one long-lived cancel scope and, just
before a handler starts, records the handler's deadline (a float; cleared when the handler
returns). The :class:`Watchdog` sleeps until the earliest recorded deadline and cancels the scope
of every lane whose handler is still running past it. The runner catches that cancellation at
the handler's boundary, counts the attempt as timed out and settles it (shielded); the lane then
replaces its spent scope with a fresh one before it takes more work.

Why: ``move_on_after`` per task costs a cancel scope and a timer handle (about 5 µs, more than a
tenth of a no-op task's whole cost in the worker); this costs two float stores per task. A
lane's deadline is only set while its task is suspended inside the handler, so the watchdog can
never cancel the bookkeeping around a handler.
"""

from __future__ import annotations

import math
import time

import anyio
import anyio.abc

__all__ = ["Lane", "Watchdog"]


class Lane:
    __slots__ = ("_watchdog", "deadline", "expired", "scope")

    def __init__(self, watchdog: Watchdog) -> None:
        self._watchdog = watchdog
        self.deadline = math.inf  # time.monotonic() seconds; inf while no handler runs
        self.scope = anyio.CancelScope()
        #: The watchdog cancelled this lane's scope: its handler ran past its deadline.
        #: Whatever the lane still has to do for that task must be shielded. (A plain
        #: attribute: it is read once a task, and ``scope.cancel_called`` is a property.)
        self.expired = False

    def renew(self) -> anyio.CancelScope:
        """A fresh scope for the tasks after a timeout (and for the first ones)."""
        self.scope = anyio.CancelScope()
        self.expired = False
        return self.scope

    def arm(self, timeout: float) -> None:
        """A handler with this timeout starts now."""
        deadline = time.monotonic() + timeout
        self.deadline = deadline
        if deadline < self._watchdog.next_check:
            self._watchdog.wake()

    def disarm(self) -> None:
        self.deadline = math.inf


class Watchdog:
    def __init__(self) -> None:
        self._lanes: list[Lane] = []
        self._wake: anyio.Event | None = None
        self.next_check = -math.inf  # until the watchdog runs, every arm() wakes it
        self.expired = 0

    def lane(self) -> Lane:
        lane = Lane(self)
        self._lanes.append(lane)
        return lane

    def drop(self, lane: Lane) -> None:
        self._lanes.remove(lane)

    def wake(self) -> None:
        """A deadline earlier than the one the watchdog sleeps towards was set."""
        self.next_check = -math.inf  # once is enough until it has looked again
        if self._wake is not None:
            self._wake.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            now = time.monotonic()
            earliest = math.inf
            for lane in self._lanes:
                deadline = lane.deadline
                if deadline <= now:
                    lane.deadline = math.inf
                    lane.expired = True
                    lane.scope.cancel()
                    self.expired += 1
                elif deadline < earliest:
                    earliest = deadline
            self._wake = wake = anyio.Event()
            self.next_check = earliest
            with anyio.move_on_after(earliest - now):
                await wake.wait()
