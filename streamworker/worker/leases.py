"""Leases: the entries this worker is running, the renewal that keeps them ours, and the
``running`` status of those that run for a while.

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
from .acker import Acker
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


#: How long a task runs before its status says ``running`` (single Redis). Shorter tasks go
#: from ``queued`` straight to their outcome, which carries ``started_at``: writing
#: ``running`` for every task cost Redis a fifth of its work per task.
RUNNING_AFTER_SECONDS = 0.5


class RunningStatus:
    """Writes ``running`` (with ``started_at``, the read's time) for the tasks that have run
    for ``after`` seconds, through the acker, so it lands in order before their outcome.

    A runner sets ``delivery.task`` when the handler starts and clears it when the handler
    returns, before it queues any outcome; a task is written once, and its ``task`` cleared.
    The fields a start gate would have written (type, priority, creation time, retry count)
    come along, for an entry that named its own task_id without being published through us.
    Only on a single Redis: on a cluster the start gate writes ``running``."""

    def __init__(self, leases: Leases, acker: Acker, *, after: float = RUNNING_AFTER_SECONDS):
        self._running = leases.running
        self._acker = acker
        self._after = after
        self.written = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._after / 2)
            self.write_due()

    def write_due(self) -> None:
        """Queue ``running`` for every task that has run for ``after`` and is not written."""
        horizon = time.monotonic() - self._after
        for delivery, since in self._running.items():
            task = delivery.task
            if task is None or since > horizon:
                continue
            delivery.task = None
            self._acker.note_running(task, delivery.read_at)
            self.written += 1
