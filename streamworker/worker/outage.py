"""Riding out Redis outages in the worker's loops: back off, log sparingly, say when it's over.

A loop that fails on a transient Redis error calls :meth:`Outage.failed` (which waits, longer
each time up to a cap) and :meth:`Outage.ok` after its next success; ``retrying.until_done``
does the same for one operation. The first failure and every 20th are logged, so a long
outage does not flood the logs, and the recovery is logged once as ``redis_reconnected``.
"""

from __future__ import annotations

import logging

import anyio

from ..hooks import TaskHooks, WorkerEvent

log = logging.getLogger("streamworker.worker")


class Outage:
    def __init__(
        self,
        what: str,
        hooks: TaskHooks | None = None,
        *,
        first_delay: float = 0.05,
        max_delay: float = 2.0,
    ) -> None:
        self._what = what
        self._hooks = hooks if hooks is not None else TaskHooks()
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._delay = first_delay
        self.failures = 0

    async def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._hooks.event(WorkerEvent.REDIS_ERROR)
        if self.failures == 1 or self.failures % 20 == 0:
            log.warning(
                "redis_unavailable",
                extra={
                    "operation": self._what,
                    "error_type": type(exc).__name__,
                    "attempts": self.failures,
                },
            )
        await anyio.sleep(self._delay)
        self._delay = min(self._max_delay, self._delay * 2)

    def ok(self) -> None:
        if self.failures:
            log.info(
                "redis_reconnected", extra={"operation": self._what, "attempts": self.failures}
            )
            self._hooks.event(WorkerEvent.REDIS_RECONNECTED)
            self.failures = 0
            self._delay = self._first_delay
