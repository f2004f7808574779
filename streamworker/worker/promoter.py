"""Promoter: moves delayed tasks (and retries waiting out their backoff) that are due onto
their streams. Safe with any number of workers: each move is one Lua script."""

from __future__ import annotations

import logging
import time

import anyio

from ..broker import Broker
from .retrying import TRANSIENT

log = logging.getLogger("streamworker.worker")


class Promoter:
    def __init__(self, broker: Broker, *, interval: float, batch: int = 500) -> None:
        self._broker = broker
        self._interval = interval
        self._batch = batch
        self.promoted = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        delay = self._interval
        while True:
            try:
                moved = await self._broker.promote_due(int(time.time() * 1000), self._batch)
            except TRANSIENT as exc:
                log.warning("promote_failed", extra={"error_type": type(exc).__name__})
                delay = min(5.0, delay * 2)
                await anyio.sleep(delay)
                continue
            delay = self._interval
            self.promoted += moved
            if moved < self._batch:  # more are due: go again at once
                await anyio.sleep(self._interval)
