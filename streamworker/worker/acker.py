"""Acker: acknowledges finished entries and writes statuses in batches.

Runners hand over what they finished; the acker sends whatever has gathered since its last
round trip as one pipeline (XACK + XDEL per stream, status writes coalesced per task). Under
load batches form by themselves; when idle a single completion is sent at once, so the batching
adds no latency.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..broker import Broker
from .retrying import until_done

log = logging.getLogger("streamworker.worker")

# (family index or -1 for a status-only write, entry id, task id, state, status fields)
Item = tuple[int, bytes | None, str, str, dict[str, Any]]


class Acker:
    def __init__(self, broker: Broker, *, capacity: int, max_batch: int = 1000) -> None:
        self._broker = broker
        self._max_batch = max_batch
        send: MemoryObjectSendStream[Item]
        receive: MemoryObjectReceiveStream[Item]
        send, receive = anyio.create_memory_object_stream[Item](max(capacity, 1))
        self._send = send
        self._receive = receive
        self.flushed_batches = 0
        self.finished = anyio.Event()

    async def complete(
        self, family_index: int, entry_id: bytes, task_id: str, fields: dict[str, Any]
    ) -> None:
        await self._send.send((family_index, entry_id, task_id, "completed", fields))

    def note_status(self, task_id: str, state: str, fields: dict[str, Any]) -> None:
        """Queue a status-only write; dropped rather than waited for when the queue is full."""
        try:
            self._send.send_nowait((-1, None, task_id, state, fields))
        except anyio.WouldBlock:
            log.debug("status_write_dropped", extra={"task_id": task_id, "state": state})

    def close(self) -> None:
        """No more items: the acker flushes what it holds and returns."""
        self._send.close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await self._serve()
        finally:
            self.finished.set()

    async def _serve(self) -> None:
        async with self._receive:
            while True:
                try:
                    first = await self._receive.receive()
                except anyio.EndOfStream:
                    return
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                # An ack in flight must not be abandoned half-way by a cancellation.
                with anyio.CancelScope(shield=True):
                    await self._flush(batch)

    async def _flush(self, batch: list[Item]) -> None:
        acks: dict[int, list[bytes]] = defaultdict(list)
        writes: dict[str, tuple[str, dict[str, Any]]] = {}
        for family_index, entry_id, task_id, state, fields in batch:
            if entry_id is not None:
                acks[family_index].append(entry_id)
            previous = writes.get(task_id)
            if previous is not None:
                merged = dict(previous[1])
                merged.update(fields)
                fields = merged
            writes[task_id] = (state, fields)
        write_list = [(task_id, state, fields) for task_id, (state, fields) in writes.items()]
        await until_done(lambda: self._broker.settle(acks, write_list), what="ack", max_delay=2.0)
        self.flushed_batches += 1
