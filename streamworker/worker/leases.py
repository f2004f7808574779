"""Leases: the entries this worker is running, and the renewal that keeps them ours.

An entry is taken over by another consumer once it has been idle for the visibility timeout.
A handler may legitimately run longer than that, so every third of the timeout the entries
still running are "touched" (XCLAIM … JUSTID to ourselves, only if still ours), which resets
their idle time without counting a delivery.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import anyio

from ..broker import Broker
from ..hooks import TaskHooks, WorkerEvent
from ..wire import Delivery
from .retrying import TRANSIENT

log = logging.getLogger("streamworker.worker")


class Leases:
    def __init__(
        self, broker: Broker, consumer: str, hooks: TaskHooks, *, visibility_timeout: float
    ) -> None:
        self._broker = broker
        self._consumer = consumer
        self._hooks = hooks
        self._interval = max(0.05, visibility_timeout / 3)
        #: Each running delivery and when it started (``time.monotonic()``). The runners add
        #: and remove their deliveries here directly (``Worker._run_tasks``): it is on every
        #: task's path, and a delivery is its own key (hashed by identity).
        self.running: dict[Delivery, float] = {}
        self.renewed = 0
        self.lost = 0

    def __len__(self) -> int:
        return len(self.running)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            await self.renew_due()

    async def renew_due(self) -> None:
        """Renew every entry that has been running for at least one interval."""
        horizon = time.monotonic() - self._interval
        due: dict[int, list[bytes]] = defaultdict(list)
        count = 0
        for delivery, since in list(self.running.items()):
            if since <= horizon:
                due[delivery.family_index].append(delivery.entry_id)
                count += 1
        if not count:
            return
        try:
            lost = await self._broker.renew_leases(self._consumer, due)
        except TRANSIENT as exc:
            log.warning("lease_renewal_failed", extra={"error_type": type(exc).__name__})
            self._hooks.event(WorkerEvent.REDIS_ERROR)
            return
        self.renewed += count - lost
        self._hooks.event(WorkerEvent.LEASE_RENEWED, None, count - lost)
        if lost:
            # Another consumer took them over (we were unreachable for too long): our run
            # will still finish, and the task may run twice — at-least-once, as documented.
            self.lost += lost
            log.warning("lease_lost", extra={"count": lost})
