"""Circuit breaker per delivery channel, its state shared in Redis by every replica.

closed -> open after ``failure_threshold`` consecutive failures, or when at least
``min_calls`` calls in the current window failed at ``failure_ratio`` or more; open ->
half-open after ``cooldown_seconds``, when exactly one probe call is let through; the probe's
success closes the breaker, its failure opens it again for another cool-down. While the breaker
is open, callers get :class:`~streamworker.Defer`: the task is postponed, not failed, so an SMTP
outage does not burn retries or fill the dead-letter stream.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import redis.asyncio as aioredis

from ..errors import Defer
from . import metrics
from ._scripts import register

__all__ = ["BreakerPolicy", "BreakerVerdict", "CircuitBreaker"]

log = logging.getLogger("streamworker.resilience")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_seconds: float = 60.0
    cooldown_seconds: float = 30.0
    #: How long the one half-open probe may take before another caller may probe.
    probe_seconds: float = 30.0

    def args(self) -> list[str | int | float]:
        return [
            self.failure_threshold,
            self.failure_ratio,
            self.min_calls,
            round(self.window_seconds * 1000),
            round(self.cooldown_seconds * 1000),
            round(self.probe_seconds * 1000),
        ]


@dataclass(frozen=True, slots=True)
class BreakerVerdict:
    allowed: bool
    wait_seconds: float
    state: str


class CircuitBreaker:
    def __init__(
        self, redis: aioredis.Redis, key: str, channel: str, policy: BreakerPolicy
    ) -> None:
        self._key = key
        self._channel = channel
        self._policy = policy
        self._script = register(redis, "breaker")
        self._redis = redis

    @property
    def channel(self) -> str:
        return self._channel

    async def check(self) -> BreakerVerdict:
        """May a call go out now? (Takes the half-open probe when the cool-down is over.)"""
        return await self._call("acquire")

    async def acquire(self) -> None:
        """Raise Defer while the breaker is open (or another replica holds the probe)."""
        verdict = await self.check()
        if not verdict.allowed:
            metrics.DEFERRED.labels(self._channel, "breaker_open").inc()
            # Spread the deferred tasks over a little time so they do not all come back in
            # the same millisecond when the cool-down ends.
            wait = verdict.wait_seconds + random.uniform(0.0, 0.2 + verdict.wait_seconds * 0.1)
            raise Defer(after=wait, reason=f"circuit breaker of {self._channel} is open")

    async def record_success(self) -> None:
        await self._call("success")

    async def record_failure(self) -> None:
        await self._call("failure")

    async def state(self) -> str:
        raw = await self._redis.hget(self._key, "state")
        return str(raw, "utf-8") if isinstance(raw, bytes) else "closed"

    async def _call(self, op: str) -> BreakerVerdict:
        allowed, wait_ms, state, transition = await self._script(
            keys=[self._key], args=[op, *self._policy.args()]
        )
        state_name = state.decode() if isinstance(state, bytes) else str(state)
        moved = transition.decode() if isinstance(transition, bytes) else str(transition)
        metrics.BREAKER_STATE.labels(self._channel).set(metrics.STATE_VALUE.get(state_name, 0))
        if moved:
            before, _, after = moved.partition(">")
            metrics.BREAKER_TRANSITIONS.labels(self._channel, after).inc()
            level = logging.WARNING if after == "open" else logging.INFO
            log.log(
                level,
                "circuit_breaker_state_changed",
                extra={"channel": self._channel, "from_state": before, "to_state": after},
            )
        return BreakerVerdict(bool(allowed), int(wait_ms) / 1000, state_name)
