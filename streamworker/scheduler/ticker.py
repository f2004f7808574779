"""The scheduler loop: hold (or wait for) the leader lease, and while leading, publish every
due occurrence of every enabled schedule.

Each occurrence has a deterministic id, ``NAME:EPOCH_SECOND``, and is published with the
idempotency key ``schedule:NAME:EPOCH_SECOND``: the producer's ``publish_once`` script checks
the key and writes the entry in one atomic step, so however many schedulers reach the same
occurrence (an old leader waking up, a crash between publishing and recording progress), it
is enqueued once, and there is no window where it is marked but not published.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..broker import connect_to
from ..errors import InvalidTask
from ..producer import Producer
from ..registry import Registry, default_registry
from ..settings import ConfigError, Settings
from .lease import LeaderLease
from .metrics import FIRES, LAST_FIRE, MISFIRES_SKIPPED
from .occurrences import next_after, plan_due
from .schedules import Schedule
from .state import ScheduleState, StateStore

__all__ = ["Clock", "LeaseLost", "Scheduler", "SystemClock", "occurrence_key"]

log = logging.getLogger("streamworker.scheduler")


class Clock(Protocol):
    """Wall-clock time in epoch seconds; tests pass a clock they move by hand."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class LeaseLost(Exception):
    """Another scheduler holds the lease now: this one stops ticking."""


def occurrence_key(name: str, fire_at: int) -> str:
    """The idempotency key of one occurrence (the same in every scheduler process)."""
    return f"schedule:{name}:{fire_at}"


class Scheduler:
    """Run with ``await scheduler.run()`` (or ``tg.start``); ``stop()`` ends it and frees the
    lease so another replica takes over at once."""

    def __init__(
        self,
        settings: Settings,
        schedules: Sequence[Schedule],
        *,
        registry: Registry | None = None,
        redis: aioredis.Redis | None = None,
        clock: Clock | None = None,
    ) -> None:
        if settings.scheduler_misfire_grace_seconds < 2 * settings.scheduler_lease_seconds:
            # A takeover after a leader dies takes up to ~1.3 lease times; occurrences of that
            # gap must still count as on time, or the skip policy would drop them.
            raise ConfigError(
                "SCHEDULER_MISFIRE_GRACE_SECONDS",
                "must be at least twice SCHEDULER_LEASE_SECONDS, so a leader takeover "
                "does not turn occurrences into misfires",
            )
        self.settings = settings
        self.schedules = [s for s in schedules if s.enabled]
        # Disabled ones are still walked (never fired), so enabling one later does not make
        # the time it was off look like an outage to catch up on.
        self._disabled = [s for s in schedules if not s.enabled]
        self._owns_redis = redis is None
        self.redis = redis or connect_to(settings)
        keys = settings.keyspace()
        self.lease = LeaderLease(
            self.redis, keys, settings.consumer, settings.scheduler_lease_seconds
        )
        self.state = StateStore(self.redis, keys)
        self.producer = Producer.from_settings(
            settings,
            redis=self.redis,
            contracts=(registry if registry is not None else default_registry).contracts,
        )
        self.clock: Clock = clock or SystemClock()
        self._grace = settings.scheduler_misfire_grace_seconds
        self._max_wait = settings.scheduler_tick_seconds
        self._stop = anyio.Event()
        self.published = 0  # occurrences this process published (fresh, not repeats)

    def stop(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._lead)
                log.info(
                    "scheduler_started",
                    extra={"holder": self.lease.holder, "schedules": len(self.schedules)},
                )
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.lease.release()
                except (RedisError, OSError):
                    log.warning("scheduler_lease_release_failed")  # it expires by itself
                if self._owns_redis:
                    await self.redis.aclose()
            log.info("scheduler_stopped", extra={"holder": self.lease.holder})

    async def _lead(self) -> None:
        renew_every = self.lease.ttl_ms / 3000
        while True:
            was_leading = self.lease.token > 0
            try:
                leading = await self.lease.try_acquire()
            except (RedisError, OSError) as exc:
                log.warning("scheduler_redis_unavailable", extra={"error_type": type(exc).__name__})
                # Unsure whether the lease is still ours: stop ticking until Redis says so.
                self.lease.forget()
                leading = False
            if leading and not was_leading:
                log.info("scheduler_leading", extra={"token": self.lease.token})
            elif was_leading and not leading:
                log.warning("scheduler_lease_lost", extra={"holder": self.lease.holder})
            renew_at = time.monotonic() + renew_every
            while leading and self.lease.held and time.monotonic() < renew_at:
                try:
                    wait = await self.tick()
                except LeaseLost:
                    break  # the renewal below finds out and logs it
                except (RedisError, OSError) as exc:
                    log.warning("scheduler_tick_failed", extra={"error_type": type(exc).__name__})
                    wait = 1.0
                await anyio.sleep(max(0.01, min(wait, renew_at - time.monotonic())))
            if not leading:
                await anyio.sleep(renew_every)

    # -- one pass -------------------------------------------------------------------------

    async def tick(self) -> float:
        """Publish what is due now (by the clock); return seconds until the next occurrence.

        Needs the lease (its value fences the state writes); raises LeaseLost without it.
        """
        now = self.clock.now()
        now_s = int(now)
        states = await self.state.read_all()
        next_due = now + self._max_wait
        for schedule in self.schedules:
            await self._tick_schedule(schedule, states.get(schedule.name, ScheduleState()), now_s)
            upcoming = next_after(schedule, now_s)
            if upcoming is not None:
                next_due = min(next_due, upcoming)
        for schedule in self._disabled:
            await self._tick_schedule(schedule, states.get(schedule.name, ScheduleState()), now_s)
        return max(0.0, next_due - now)

    async def _tick_schedule(self, schedule: Schedule, state: ScheduleState, now_s: int) -> None:
        if state.cursor is None:
            # First time any scheduler sees it: start from now, never back-fill.
            await self._advance(schedule.name, now_s)
            return
        plan = plan_due(schedule, state.cursor, now_s, self._grace)
        if not plan.fire and not plan.skipped:
            return
        if state.paused or not schedule.enabled:
            # Occurrences while paused (or disabled) are dropped: no burst on resuming.
            await self._advance(schedule.name, now_s)
            return
        if plan.skipped:
            MISFIRES_SKIPPED.labels(schedule.name).inc(plan.skipped)
            log.warning(
                "schedule_misfires_skipped",
                extra={
                    "schedule": schedule.name,
                    "skipped": plan.skipped,
                    "at_least": plan.skipped_at_least,
                    "caught_up": plan.caught_up,
                    "policy": schedule.misfire,
                },
            )
        for fire_at in plan.fire:
            await self._fire(schedule, fire_at)
        await self._advance(schedule.name, now_s)

    async def _fire(self, schedule: Schedule, fire_at: int) -> None:
        key = occurrence_key(schedule.name, fire_at)
        mine = str(uuid.uuid4())
        try:
            task_id = await self.producer.publish(
                schedule.task_type,
                schedule.payload,
                priority=schedule.priority,
                # Not run before its time, even if this host's clock runs ahead.
                scheduled_for=datetime.fromtimestamp(fire_at, UTC),
                idempotency_key=key,
                correlation_id=key,
                task_id=mine,
            )
        except InvalidTask as exc:
            # Checked at start, so only a limit changed since could do this: drop, say why.
            log.error("schedule_fire_invalid", extra={"schedule": schedule.name, "error": str(exc)})
            await self._advance(schedule.name, fire_at)
            return
        await self._advance(schedule.name, fire_at, fired_task=task_id)
        if task_id == mine:  # published now, not a repeat of another scheduler's publish
            self.published += 1
            FIRES.labels(schedule.name).inc()
            LAST_FIRE.labels(schedule.name).set(fire_at)
            log.info(
                "schedule_fired",
                extra={"schedule": schedule.name, "fire_at": fire_at, "task_id": task_id},
            )

    async def _advance(self, name: str, cursor: int, *, fired_task: str | None = None) -> None:
        if not await self.state.advance(self.lease.value, name, cursor, fired_task=fired_task):
            raise LeaseLost
