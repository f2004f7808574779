"""Janitor: removes consumers that have been idle for ``CONSUMER_IDLE_SECONDS`` and own no
pending entries (replaced pods, finished test runs), so the group's consumer list stays small.

A consumer that still owns entries is never removed: DELCONSUMER would drop its pending
entries silently. The recoverer claims those first; the janitor removes it on a later round.
The check and the removal happen in one Lua script, so an entry read in between is not lost.
"""

from __future__ import annotations

import logging

import anyio

from ..broker import Broker
from ..hooks import TaskHooks, WorkerEvent
from .retrying import TRANSIENT

log = logging.getLogger("streamworker.worker")


class Janitor:
    def __init__(
        self, broker: Broker, consumer: str, hooks: TaskHooks, *, idle_seconds: float
    ) -> None:
        self._broker = broker
        self._consumer = consumer
        self._hooks = hooks
        self._idle_ms = int(idle_seconds * 1000)
        self._interval = max(0.1, min(idle_seconds / 4, 300.0))
        self.removed = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            try:
                await self.sweep()
            except TRANSIENT as exc:
                log.warning("janitor_failed", extra={"error_type": type(exc).__name__})

    async def sweep(self) -> int:
        removed = 0
        for index, family in enumerate(self._broker.families):
            for info in await self._broker.consumers(index):
                name = info.get("name")
                name = name.decode() if isinstance(name, bytes) else str(name)
                if name == self._consumer:
                    continue
                if int(info.get("pending", 0)) or int(info.get("idle", 0)) < self._idle_ms:
                    continue
                if await self._broker.remove_idle_consumer(index, name, self._idle_ms):
                    removed += 1
                    self._hooks.event(WorkerEvent.CONSUMER_REMOVED, family.priority)
                    log.info(
                        "consumer_removed", extra={"consumer": name, "priority": family.priority}
                    )
        self.removed += removed
        return removed
