"""Side effects done once per task, on the consumer side (CONTRACT.md §3 is at-least-once).

A redelivered task (retry after a later step failed, reclaim after a crash, replay from the
dead-letter stream within the retention time) must not send the same reminder twice. Each
effect has a marker ``Keyspace.done(scope, task_id)``:

1. before the effect the attempt *claims* the marker (SET NX with a lease);
2. after the effect succeeded the marker becomes ``done`` for ``COMPLETED_TTL_SECONDS``;
3. if the effect raised (or the attempt was cancelled) the claim is released, so the next
   attempt tries again.

Guarantee: an effect that completed is not repeated while its marker lives. It can be repeated
only if the process dies (or loses Redis) after the effect and before step 2 — one Redis round
trip — or if the effect runs longer than the claim lease. Two attempts never run the effect at
the same time: the second finds a live claim and is deferred until the lease ends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import redis.asyncio as aioredis

from ..errors import Defer
from ..keyspace import Keyspace
from ._scripts import register

__all__ = ["SideEffects"]

T = TypeVar("T")


class SideEffects:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        *,
        done_ttl_seconds: int,
        lease_seconds: float,
    ) -> None:
        self._keys = keys
        self._done_ttl = done_ttl_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._claim = register(redis, "side_effect_claim")
        self._settle = register(redis, "side_effect_settle")

    @asynccontextmanager
    async def once(self, scope: str, task_id: str) -> AsyncIterator[bool]:
        """``async with effects.once("email", task_id) as first:`` — do the effect only when
        ``first`` is true. Raises Defer while another attempt holds the claim."""
        key = self._keys.done(scope, task_id)
        token = uuid.uuid4().hex
        reply = await self._claim(keys=[key], args=[token, self._lease_ms])
        if not int(reply[0]):
            value, pttl = reply[1], int(reply[2])
            if value == b"done":
                yield False
                return
            raise Defer(
                after=max(pttl, 100) / 1000,
                reason=f"side effect {scope} is in progress in another attempt",
            )
        try:
            yield True
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._settle(keys=[key], args=[token, "release", self._done_ttl])
            raise
        with anyio.CancelScope(shield=True):
            await self._settle(keys=[key], args=[token, "done", self._done_ttl])

    async def run_once(
        self, scope: str, task_id: str, effect: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """Run ``effect`` unless it already happened: ``(ran, result)``."""
        async with self.once(scope, task_id) as first:
            if first:
                return True, await effect()
        return False, None
