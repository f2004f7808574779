"""Distributed rate limit per delivery channel (e.g. SMS 10/s across all replicas).

A sliding-window log in Lua (``scripts/rate_limit.lua``): Redis records when each send ended
and lets a new one start only while fewer than ``limit`` ended within the last window. Counting
*ends* rather than starts makes the limit hold where it matters — at the receiver, whose clock
sees a request somewhere between its start and its end (a start-time limiter such as GCRA lets
network jitter push ``limit + 1`` requests into one receiver second). The price is a little
throughput: each send occupies its slot for its own latency on top of the window.

A caller whose slot frees within ``max_wait_seconds`` waits for it in place; a caller further
back gets :class:`~streamworker.Defer` — the task is postponed, never dropped, and no retry is
used.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis.asyncio as aioredis

from ..errors import Defer
from . import metrics
from ._scripts import register

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        channel: str,
        limit: float,
        *,
        window_seconds: float = 1.0,
        lease_seconds: float = 30.0,
        max_wait_seconds: float = 2.0,
    ) -> None:
        if limit <= 0 or window_seconds <= 0 or lease_seconds <= 0:
            raise ValueError("rate limit, window and lease must be > 0")
        # A fractional rate (0.5/s) becomes 1 per 2 s.
        if limit < 1:
            window_seconds /= limit
            limit = 1
        self._key = key
        self._channel = channel
        self._limit = int(limit)
        self._window_ms = window_seconds * 1000
        self._lease_ms = lease_seconds * 1000
        self._max_wait = max_wait_seconds
        self._script = register(redis, "rate_limit")

    async def _try_start(self, token: str) -> float | None:
        started, wait_ms = await self._script(
            keys=[self._key],
            args=["acquire", self._limit, self._window_ms, self._lease_ms, token],
        )
        return None if int(started) else max(float(wait_ms) / 1000, 0.001)

    async def acquire(self) -> str:
        """Start a send: returns its token (pass it to :meth:`finish`), waiting in place for
        a slot that frees soon, raising Defer otherwise."""
        token = uuid.uuid4().hex
        waited = 0.0
        while True:
            wait = await self._try_start(token)
            if wait is None:
                return token
            if waited + wait > self._max_wait:
                metrics.DEFERRED.labels(self._channel, "rate_limited").inc()
                # Spread the returns so the deferred tasks do not come back together.
                raise Defer(
                    after=wait + random.uniform(0, 0.2 * self._window_ms / 1000),
                    reason=f"rate limit of {self._channel} reached",
                )
            # Other replicas compete for the same slot: a little jitter, then ask again.
            pause = wait + random.uniform(0, 0.02)
            await anyio.sleep(pause)
            waited += pause

    async def finish(self, token: str) -> None:
        """The send is over (whatever its outcome): its slot's clock starts now."""
        with anyio.CancelScope(shield=True):
            await self._script(keys=[self._key], args=["finish", token])

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        token = await self.acquire()
        try:
            yield
        finally:
            await self.finish(token)
