"""The scheduler leader lease: one scheduler ticks at a time, another takes over within about
one lease time after the leader dies.

SET NX PX with a fencing token (INCR) per term; renewal is a compare-and-extend and release a
compare-and-delete (Lua), so a holder only ever extends or frees its own term. Duplicate
publishes are prevented by the occurrence's idempotency key regardless of the lease; the lease
keeps the normal case to one ticking scheduler, and its token fences the state writes.
"""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

from ..keyspace import Keyspace
from ._scripts import load_script
from .metrics import LEADER, LEADER_CHANGES

__all__ = ["LeaderLease"]


class LeaderLease:
    def __init__(
        self, redis: aioredis.Redis, keys: Keyspace, owner: str, ttl_seconds: float
    ) -> None:
        self._redis = redis
        self._keys = keys
        #: Unique per process run, so a restarted process with the same name starts a new term.
        self.holder = f"{owner}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(100, int(ttl_seconds * 1000))
        self.token = 0
        self._last_token = 0
        self._valid_until = 0.0
        self._acquire = load_script(redis, "scheduler_lease_acquire")
        self._renew = load_script(redis, "scheduler_lease_renew")
        self._release = load_script(redis, "scheduler_lease_release")

    @property
    def value(self) -> str:
        """What the leader key holds during our term; the fence for state writes."""
        return f"{self.token}:{self.holder}"

    @property
    def held(self) -> bool:
        """Ours, and surely not expired yet by our own clock (a safety margin of 20%)."""
        return self.token > 0 and time.monotonic() < self._valid_until

    async def try_acquire(self) -> bool:
        """Take (or keep) the lease; True while we hold it."""
        started = time.monotonic()
        if self.token:
            ok = bool(
                await self._renew(
                    keys=[self._keys.scheduler_leader], args=[self.value, self.ttl_ms]
                )
            )
            if not ok:
                self.forget()
                return False
        else:
            token = int(
                await self._acquire(
                    keys=[self._keys.scheduler_leader, self._keys.scheduler_fence],
                    args=[self.holder, self.ttl_ms],
                )
            )
            if not token:
                return False
            if token != self._last_token:  # a new term, not our own after a lost reply
                LEADER_CHANGES.inc()
            self.token = self._last_token = token
            LEADER.set(1)
        self._valid_until = started + 0.8 * self.ttl_ms / 1000
        return True

    async def release(self) -> None:
        if not self.token:
            return
        try:
            await self._release(keys=[self._keys.scheduler_leader], args=[self.value])
        finally:
            self.forget()

    def forget(self) -> None:
        """Stop considering the lease ours (it was taken, or released)."""
        self.token = 0
        self._valid_until = 0.0
        LEADER.set(0)

    async def current_holder(self) -> str | None:
        raw = await self._redis.get(self._keys.scheduler_leader)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)
