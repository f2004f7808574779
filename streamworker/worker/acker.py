"""Acker: acknowledges finished entries and writes statuses in batches.

Runners hand over what they finished; what has gathered since the last batch goes to Redis as
one batch (``ack_delete.lua`` per stream, status writes coalesced per task). Under load batches
form by themselves; when idle a single completion is sent at once, so the batching adds no
latency.

On a single Redis, under load, the reader takes the batch and sends it in the same round trip
as its next read (:meth:`Acker.take_for_read`), so a batch costs one round trip instead of
two; the acker sends on its own only what the reader does not take (idle, or blocked waiting
for entries). Only one batch is on its way at a time, whoever sends it, so a task's status
writes land in the order they were made; what a failed read carried comes back to the front
of the queue.

The queue is a bounded deque rather than a memory object stream: handing over a completion is
then an append (no checkpoint, no task switch) unless the queue is full, which only happens
while Redis is not taking the acks; then runners wait for room.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from ..broker import Broker, Settlement
from ..wire import Delivery, Task, format_time
from .retrying import until_done

log = logging.getLogger("streamworker.worker")
T = TypeVar("T")

# (family index or -1 for a status-only write, entry id, task id, state, status fields);
# family index _IN_ORDER marks an operation to run in sequence (see ``run_in_order``). A
# completion carries its delivery instead of fields: it is written completed at its batch's
# time, started at its read's time.
Item = tuple[int, bytes | None, str, str, dict[str, Any] | Delivery]
_IN_ORDER = -2


class Acker:
    def __init__(self, broker: Broker, *, capacity: int, max_batch: int = 1000) -> None:
        self._broker = broker
        self._statuses = broker.status.enabled  # else completions carry no status to write
        self._max_batch = max_batch
        self._capacity = max(capacity, 1)
        self._queue: deque[Item] = deque()
        self._closed = False
        self._wake_acker: anyio.Event | None = None  # set while the acker waits for items
        self._room: anyio.Event | None = None  # set while runners wait for room
        # A batch of ours is on its way to Redis, sent by the acker or with a read: the next
        # one waits for it, so that a task's status writes land in the order they were made.
        self._sending = False
        self._sent: anyio.Event | None = None  # set while the acker waits for a read's batch
        #: Set by the worker when its reader sends acks with its reads (single Redis): the
        #: acker then gives the reader a chance to take what is queued before sending it.
        self.reads_settle = False
        self.settled_with_reads = 0
        self.flushed_batches = 0
        self.finished = anyio.Event()

    async def _put(self, item: Item) -> None:
        while len(self._queue) >= self._capacity:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        self._put_nowait(item)

    def _put_nowait(self, item: Item) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._queue.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._wake_acker is not None:
            self._wake_acker.set()
            self._wake_acker = None

    async def discard(self, family_index: int, entry_id: bytes) -> None:
        """Acknowledge and delete an entry without writing any status."""
        await self._put((family_index, entry_id, "", "", {}))

    async def complete(self, delivery: Delivery, task_id: str) -> None:
        """Acknowledge and delete an entry whose task completed, and write its status
        ``completed`` (at the time its batch is put together; started when it was read)."""
        await self._put((delivery.family_index, delivery.entry_id, task_id, "completed", delivery))

    def complete_nowait(self, delivery: Delivery, task_id: str) -> bool:
        """:meth:`complete` without waiting: False (and nothing queued) when the queue is
        full. The runner's common case, without the two coroutines ``complete`` costs (and
        with ``_put_nowait`` inline: this runs once a task)."""
        queue = self._queue
        if len(queue) >= self._capacity:
            return False
        if self._closed:
            raise anyio.ClosedResourceError
        queue.append((delivery.family_index, delivery.entry_id, task_id, "completed", delivery))
        if self._wake_acker is not None:
            self._wake()
        return True

    def note_status(self, task_id: str, state: str, fields: dict[str, Any]) -> None:
        """Queue a status-only write; dropped rather than waited for when the queue is full."""
        if len(self._queue) >= self._capacity:
            log.debug("status_write_dropped", extra={"task_id": task_id, "state": state})
            return
        self._put_nowait((-1, None, task_id, state, fields))

    def note_running(self, task: Task, started_at: float) -> None:
        """Queue ``running`` for ``task`` with every field its first status has (its hash
        may not exist yet: a raw entry's), started at ``started_at`` (epoch seconds)."""
        self.note_status(
            task.task_id,
            "running",
            {
                "task_type": task.task_type,
                "priority": task.priority,
                "created_at": task.created_at,
                "started_at": format_time(started_at),
                "retry_count": task.retry_count,
            },
        )

    async def run_in_order(self, op: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run ``op`` after every item queued before it has been written.

        Retries and dead letters go through here, so a task's earlier status write
        ("running", for a long task) can never land after its final one.
        """
        done = anyio.Event()
        box: dict[str, Any] = {"op": op, "done": done, "what": what}
        await self._put((_IN_ORDER, None, "", "", box))
        await done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]  # type: ignore[no-any-return]

    def take_for_read(self) -> Settlement | None:
        """What is queued, for the reader to send in the same round trip as its next read
        (``Broker.read``'s ``settle``), up to the first in-order operation; None when there
        is nothing, or while a batch is already on its way. The reader must hand it back
        with :meth:`read_done`."""
        queue = self._queue
        if self._sending or not queue or queue[0][0] == _IN_ORDER:
            return None
        items: list[Item] = []
        while queue and len(items) < self._max_batch and queue[0][0] != _IN_ORDER:
            items.append(queue.popleft())
        self._sending = True
        self._made_room()
        return self._collect(items)

    def read_done(self, settlement: Settlement) -> None:
        """The read that carried ``settlement`` returned or failed. What Redis did not take
        goes back to the front of the queue, in order, for the acker to send."""
        self._sending = False
        if settlement.done:
            self.settled_with_reads += 1
            self._write_new_statuses(settlement)
        else:
            self._queue.extendleft(reversed(settlement.items))
            self._wake()
        if self._sent is not None:
            self._sent.set()
            self._sent = None

    def _made_room(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def close(self) -> None:
        """No more items: the acker flushes what it holds and returns."""
        self._closed = True
        for event in (self._wake_acker, self._room):
            if event is not None:
                event.set()
        self._wake_acker = self._room = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await self._serve()
        finally:
            self.finished.set()

    async def _serve(self) -> None:
        queue = self._queue
        while True:
            if self._sending:
                # The reader's read carries a batch: ours goes after it (or it comes back).
                self._sent = sent = anyio.Event()
                await sent.wait()
                continue
            if not queue:
                if self._closed:
                    return
                self._wake_acker = wake = anyio.Event()
                await wake.wait()
                continue
            if self.reads_settle and not self._closed:
                # Under load the reader is about to read again (it hands a batch over in two
                # halves, and reads between them): let it take what is queued along with
                # that read, one round trip instead of two. If it does not, send it now.
                await anyio.lowlevel.cancel_shielded_checkpoint()
                if self._sending or not queue:
                    continue
            take = min(len(queue), self._max_batch)
            batch = [queue.popleft() for _ in range(take)]
            self._made_room()
            # An ack in flight must not be abandoned half-way by a cancellation.
            with anyio.CancelScope(shield=True):
                self._sending = True
                try:
                    start = 0
                    for i, item in enumerate(batch):
                        if item[0] == _IN_ORDER:
                            if i > start:
                                await self._flush(batch[start:i])
                            await self._run_op(item[4])  # type: ignore[arg-type]
                            start = i + 1
                    if start < len(batch):
                        await self._flush(batch[start:])
                finally:
                    self._sending = False

    async def _run_op(self, box: dict[str, Any]) -> None:
        try:
            box["result"] = await until_done(box["op"], what=box["what"])
        except Exception as exc:
            box["error"] = exc
        finally:
            box["done"].set()

    async def _flush(self, batch: list[Item]) -> None:
        settlement = self._collect(batch)
        await until_done(lambda: self._broker.settle(settlement), what="ack", max_delay=2.0)
        self.flushed_batches += 1
        self._write_new_statuses(settlement)

    def _write_new_statuses(self, settlement: Settlement) -> None:
        """Queue the rest of the fields of status hashes a completed write made (an entry
        that named its own task_id without a status: see ``Broker.new_status_rows``)."""
        if settlement.new_statuses:
            for task_id, state, fields in self._broker.new_status_rows(settlement):
                # even when closed: the acker sends what is queued before it returns
                self._queue.append((-1, None, task_id, state, dict(fields)))
            self._wake()

    def _collect(self, batch: list[Item]) -> Settlement:
        """The batch's entry ids per stream, the tasks that completed (written completed at
        one time, now), and one status write for each other task (merged)."""
        acks: dict[int, list[bytes]] = defaultdict(list)
        completed: dict[str, Delivery] = {}  # in order
        writes: dict[str, tuple[str, dict[str, Any]]] = {}
        statuses = self._statuses
        at = format_time(time.time())
        for family_index, entry_id, task_id, state, carried in batch:
            if entry_id is not None:
                acks[family_index].append(entry_id)
            if not (task_id and statuses):
                continue
            previous = writes.get(task_id)
            fields: dict[str, Any]
            if isinstance(carried, Delivery):
                if previous is None:
                    completed[task_id] = carried  # the common case: its only write here
                    continue
                fields = {"completed_at": at}
                if "started_at" not in previous[1]:  # else written when it started
                    fields["started_at"] = format_time(carried.read_at)
            else:
                fields = carried
            if previous is None and task_id in completed:
                # Written again after it completed, in the same batch (a repeated delivery
                # started): the completion is merged into this write, in order.
                delivery = completed.pop(task_id)
                previous = (
                    "completed",
                    {"completed_at": at, "started_at": format_time(delivery.read_at)},
                )
            if previous is not None:
                merged = dict(previous[1])
                merged.update(fields)
                fields = merged
            writes[task_id] = (state, fields)
        return Settlement(
            acks,
            [(task_id, state, fields) for task_id, (state, fields) in writes.items()],
            completed,
            at,
            batch,
        )
