"""Reader: fetches entries for free handler slots, in priority order, and hands them over.

It never fetches more than there are free slots (one read of several streams in one round
trip), except that a blocking wait can return one entry per stream; those wait for a slot.
On start it first re-reads this consumer's own pending entries (left by a previous run of
the same consumer name), walking each stream's pending list with a cursor. Under load, the
next read goes out while the runners work on the batch just handed over (``hand_over``), so
Redis and the runners work at the same time.

A reader covers a set of families that one script can read together: all of them on a single
node, one partition's (one hash slot) on Redis Cluster, where the worker runs one reader per
partition. Within its set, priority is exact (strict or weighted); the partitions of one
priority take turns being read first, so none is starved.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Sequence

import anyio
from redis.exceptions import ResponseError

from ..broker import Broker
from ..hooks import TaskHooks
from ..wire import Delivery, format_time
from .acker import Acker
from .handoff import Feed
from .outage import Outage
from .retrying import TRANSIENT, until_done

log = logging.getLogger("streamworker.worker")
_SPLIT_AT = 8  # smaller batches are handed over in one piece


class Slots:
    """Free handler slots: taken by the feeders per batch, given back by a runner per task.

    A plain count, not an ``anyio.Semaphore``: a runner gives its slot back once a task, and
    a semaphore's ``release`` costs more than the count. It keeps a semaphore's fairness: a
    slot given back while feeders wait (the readers, one per partition on a cluster, and the
    recoverer) goes straight to the one that has waited longest, so one feeder cannot take
    every slot again and again while another waits (each partition gets read). A waiter
    waits on a bare asyncio future, as the hand-off's runners do."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()  # each gets one slot when woken

    async def take_batch(self, limit: int, *, eager: bool = False) -> int:
        """At least one slot and at most ``limit``, as many as are free. ``eager`` takes free
        slots without first letting the runners go on (see ``hand_over``)."""
        if eager and self._free > 0:
            taken = 0
        else:
            await anyio.lowlevel.checkpoint()
            if self._free > 0:
                taken = 0
            else:
                await self._wait()
                taken = 1  # handed over by give()
        more = min(limit - taken, self._free)
        self._free -= more
        return taken + more

    async def take(self) -> None:
        await self.take_batch(1)

    async def _wait(self) -> None:
        """Until :meth:`give` hands this waiter a slot."""
        wake = asyncio.get_running_loop().create_future()
        self._waiters.append(wake)
        try:
            await wake
        except BaseException:
            if wake.done() and not wake.cancelled():
                self.give()  # handed a slot, then cancelled before it ran: pass it on
            elif wake in self._waiters:
                self._waiters.remove(wake)
            raise

    def give(self, n: int = 1) -> None:
        waiters = self._waiters
        while n and waiters:
            wake = waiters.popleft()
            if not wake.done():  # a cancelled waiter's future is done already: skip it
                wake.set_result(None)
                n -= 1
        self._free += n

    @property
    def free(self) -> int:
        return self._free


class Reader:
    def __init__(
        self,
        broker: Broker,
        consumer: str,
        slots: Slots,
        *,
        mode: str = "strict",
        weights: Sequence[int] = (8, 4, 2, 1),
        block_ms: int = 1000,
        max_batch: int = 500,
        check_cancelled: bool = False,
        hooks: TaskHooks | None = None,
        families: Sequence[int] | None = None,
        acker: Acker | None = None,
    ) -> None:
        self._broker = broker
        # On a single Redis the acker's queued acks and statuses go with each read (one
        # round trip per batch where there were two); see Acker.take_for_read.
        self._acker = acker
        #: Indices into ``broker.families`` this reader covers, grouped by priority (rank).
        covered = range(len(broker.families)) if families is None else families
        by_rank: dict[int, list[int]] = {}
        for index in covered:
            by_rank.setdefault(broker.families[index].rank, []).append(index)
        self._by_rank = [by_rank[rank] for rank in sorted(by_rank)]
        self._ranks = sorted(by_rank)
        self.families = [i for group in self._by_rank for i in group]
        self._turn = 0  # which partition of each priority is read first this time
        self._consumer = consumer
        self._slots = slots
        self._mode = mode
        self._weights = tuple(weights)
        self._block_ms = block_ms
        self._max_batch = max_batch
        self._check_cancelled = check_cancelled
        self._outage = Outage("read", hooks or TaskHooks())
        self.read_count = 0

    def plan(self, n: int) -> tuple[list[int], list[int]]:
        """Order of the families and how many to take from each in the first pass."""
        self._turn += 1
        groups = [self._rotated(group) for group in self._by_rank]
        if self._mode == "strict":
            flat = [i for group in groups for i in group]
            return flat, [n] * len(flat)
        # Weighted: a weighted shuffle decides which priority is served first, and each
        # priority's quota is its share of n (rounded up), split over its partitions, so a
        # low priority always makes progress.
        weights = [self._weights[rank] for rank in self._ranks]
        total = sum(weights)
        ranked = sorted(
            range(len(groups)),
            key=lambda g: random.random() ** (1.0 / weights[g]),
            reverse=True,
        )
        order: list[int] = []
        quotas: list[int] = []
        for g in ranked:
            share = -(-n * weights[g] // total)
            order += groups[g]
            quotas += [-(-share // len(groups[g]))] * len(groups[g])
        return order, quotas

    def _rotated(self, group: list[int]) -> list[int]:
        k = self._turn % len(group)
        return group[k:] + group[:k]

    async def run(
        self,
        send: Feed,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with send:
            task_status.started()
            await self._read_own_pending(send)
            eager = False
            while True:
                # After a batch of some size, read for the free slots at once, while the
                # runners still have (part of) that batch to do.
                n = await self._slots.take_batch(self._max_batch, eager=eager)
                eager = False
                order, quotas = self.plan(n)
                deliveries = await self._fetch(n, order, quotas, [">"] * len(order))
                if deliveries is None:
                    self._slots.give(n)
                    continue
                self._slots.give(n - len(deliveries))
                if not deliveries:
                    deliveries = await self._wait()
                    for delivery in deliveries:
                        await self._slots.take()
                        await send.send(delivery)
                    continue
                eager = await hand_over(send, deliveries, self._slots)

    async def _read_own_pending(self, send: Feed) -> None:
        cursors = dict.fromkeys(self.families, "0")
        while True:
            n = await self._slots.take_batch(self._max_batch)
            deliveries = await self._fetch(
                n, self.families, [n] * len(self.families), [cursors[i] for i in self.families]
            )
            if deliveries is None:
                self._slots.give(n)
                continue
            self._slots.give(n - len(deliveries))
            if deliveries:
                log.info("pending_recovered", extra={"count": len(deliveries)})
            for delivery in deliveries:
                cursors[delivery.family_index] = delivery.entry_id.decode()
                await send.send(delivery)
            if len(deliveries) < n:
                return

    async def _fetch(
        self, n: int, order: list[int], quotas: list[int], start_ids: list[str]
    ) -> list[Delivery] | None:
        """The entries read, or None after a failure (already waited out)."""
        acker = self._acker
        settle = acker.take_for_read() if acker is not None else None
        try:
            try:
                deliveries = await self._broker.read(
                    self._consumer,
                    n,
                    order,
                    quotas,
                    start_ids,
                    settle=settle,
                )
            finally:
                if settle is not None and acker is not None:
                    acker.read_done(settle)  # what Redis did not take goes back
        except TRANSIENT as exc:
            await self._outage.failed(exc)
            return None
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group was deleted under us (e.g. FLUSHDB): recreate and go on.
            log.warning("group_missing_recreating")
            await until_done(self._broker.ensure_groups, what="ensure_groups")
            return None
        self._outage.ok()
        await self._screen(deliveries)
        self.read_count += len(deliveries)
        return deliveries

    async def _screen(self, deliveries: list[Delivery]) -> None:
        """Flag cancelled tasks and mark the others running (Redis Cluster: see
        ``Broker.begin``). The entries are already ours, so this must not give up."""
        if self._check_cancelled and deliveries:
            await until_done(
                lambda: self._broker.begin(deliveries, format_time(time.time())),
                what="cancel_check",
            )

    async def _wait(self) -> list[Delivery]:
        try:
            deliveries = await self._broker.wait_for_entries(
                self._consumer, self._block_ms, self.families
            )
        except TRANSIENT as exc:
            await self._outage.failed(exc)
            return []
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await until_done(self._broker.ensure_groups, what="ensure_groups")
            return []
        self._outage.ok()
        await self._screen(deliveries)
        self.read_count += len(deliveries)
        return deliveries


async def hand_over(send: Feed, deliveries: list[Delivery], slots: Slots) -> bool:
    """Hand over a batch so that the next read can overlap the runners' work on it. True when
    the reader should read for the free slots at once (without first letting the runners
    go through what they were handed).

    Under load this settles into double buffering: about half the slots are with the
    runners while the entries for the other half are being read, and each read goes out as
    soon as the previous one is handed over. When fewer than half the slots are free, a
    first part of the batch (up to half) is handed over and the runners go through it
    before the rest is handed over, so that the next read has about half the slots to
    fill; a read for a handful of slots would cost a whole round trip for little. The pause
    cannot be cancelled, so a batch is always handed over whole.

    A small batch goes in one piece, and the reader then lets its runners start on it before
    it reads again: under a light load, a task's start is not put behind the next read."""
    n = len(deliveries)
    if n < _SPLIT_AT:
        first = 0
        eager = False
    else:
        first = max(0, min(n // 2, slots.size // 2 - slots.free))
        eager = True
    if first:
        send.send_many(deliveries[:first])
        await anyio.lowlevel.cancel_shielded_checkpoint()
        send.send_many(deliveries[first:])
    else:
        send.send_many(deliveries)
    return eager
