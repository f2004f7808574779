"""Recoverer: takes over entries left pending by consumers that died (CONTRACT.md §3).

Every ``RECLAIM_INTERVAL_SECONDS`` it runs XAUTOCLAIM with min idle = the visibility timeout on
each priority stream, walking the whole pending list across calls with a cursor per stream,
and hands what it claimed to the runners like the reader does — never more than there are
free handler slots. Entries whose delivery count is now over ``MAX_DELIVERIES`` are not run
again: the runner dead-letters them (the reaper's rule, see runner.py). Pending ids whose
stream entry was deleted are dropped from the pending list by Redis itself and only counted.

Entries of live consumers are not taken: their leases are renewed while they run (leases.py).
"""

from __future__ import annotations

import functools
import logging
import time

import anyio

from ..broker import Broker
from ..hooks import TaskHooks, WorkerEvent
from ..wire import format_time
from .handoff import Feed
from .outage import Outage
from .reader import Slots
from .retrying import TRANSIENT, until_done

log = logging.getLogger("streamworker.worker")

_WALK_DONE = b"0-0"


class Recoverer:
    def __init__(
        self,
        broker: Broker,
        consumer: str,
        slots: Slots,
        hooks: TaskHooks,
        *,
        min_idle_seconds: float,
        interval: float,
        check_cancelled: bool = True,
        max_batch: int = 100,
    ) -> None:
        self._broker = broker
        self._consumer = consumer
        self._slots = slots
        self._hooks = hooks
        self._min_idle_ms = max(1, int(min_idle_seconds * 1000))
        self._interval = interval
        self._check_cancelled = check_cancelled
        self._max_batch = max_batch
        self._cursors = [_WALK_DONE] * len(broker.families)
        self._outage = Outage("reclaim", hooks)
        self.reclaimed = 0
        self.deleted = 0

    async def run(self, send: Feed) -> None:
        async with send:
            while True:
                await anyio.sleep(self._interval)
                try:
                    for index in range(len(self._broker.families)):
                        await self._walk(index, send)
                except TRANSIENT as exc:
                    await self._outage.failed(exc)
                else:
                    self._outage.ok()

    async def _walk(self, index: int, send: Feed) -> None:
        """One pass over a stream's pending list, from the start to the end."""
        priority = self._broker.families[index].priority
        while True:
            n = await self._slots.take_batch(self._max_batch)
            try:
                cursor, deliveries, deleted = await self._broker.reclaim(
                    index, self._consumer, self._min_idle_ms, self._cursors[index], n
                )
            except BaseException:
                self._slots.give(n)
                raise
            if deliveries and self._check_cancelled:
                # Claimed: they are ours now, so the check must not give up half-way.
                await until_done(
                    functools.partial(self._broker.begin, deliveries, format_time(time.time())),
                    what="cancel_check",
                )
            self._slots.give(n - len(deliveries))
            self._cursors[index] = cursor
            if deleted:
                self.deleted += deleted
                self._hooks.event(WorkerEvent.DELETED_PENDING, priority, deleted)
                log.warning(
                    "pending_entries_deleted", extra={"priority": priority, "count": deleted}
                )
            if deliveries:
                self.reclaimed += len(deliveries)
                self._hooks.event(WorkerEvent.RECLAIMED, priority, len(deliveries))
                for delivery in deliveries:
                    log.info(
                        "task_reclaimed",
                        extra={
                            "entry_id": delivery.entry_id.decode(),
                            "priority": priority,
                            "deliveries": delivery.deliveries,
                        },
                    )
                    await send.send(delivery)
            if cursor == _WALK_DONE:
                return
