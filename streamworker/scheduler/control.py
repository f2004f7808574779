"""What an operator does with schedules (used by the CLI, and by HTTP alike): list them with
their next fire times, fire one now, pause and resume."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import msgspec
import redis.asyncio as aioredis

from ..producer import Producer
from ..registry import Registry, default_registry
from ..settings import Settings
from ..wire import format_time
from .occurrences import next_after
from .schedules import Schedule
from .state import StateStore

__all__ = ["ScheduleControl", "ScheduleView", "UnknownSchedule"]


class UnknownSchedule(LookupError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}")


class ScheduleView(msgspec.Struct, kw_only=True):
    name: str
    cron: str
    timezone: str
    task_type: str
    priority: str
    enabled: bool
    paused: bool
    misfire: str
    description: str
    next_fire: str | None  # RFC 3339 UTC; None when disabled or paused
    last_fire: str | None
    last_task_id: str | None
    last_manual_run: str | None


class ScheduleControl:
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        schedules: Sequence[Schedule],
        *,
        registry: Registry | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._schedules = {s.name: s for s in schedules}
        self._state = StateStore(redis, settings.keyspace())
        self._registry = registry if registry is not None else default_registry

    def get(self, name: str) -> Schedule:
        try:
            return self._schedules[name]
        except KeyError:
            raise UnknownSchedule(name) from None

    async def list(self, now: float | None = None) -> list[ScheduleView]:
        now = time.time() if now is None else now
        states = await self._state.read_all()
        views = []
        for schedule in self._schedules.values():
            state = states.get(schedule.name)
            paused = bool(state and state.paused)
            upcoming = next_after(schedule, int(now)) if schedule.enabled and not paused else None
            views.append(
                ScheduleView(
                    name=schedule.name,
                    cron=schedule.cron,
                    timezone=schedule.timezone,
                    task_type=schedule.task_type,
                    priority=schedule.priority,
                    enabled=schedule.enabled,
                    paused=paused,
                    misfire=schedule.misfire,
                    description=schedule.description,
                    next_fire=format_time(upcoming) if upcoming is not None else None,
                    last_fire=_time(state.last_fire if state else None),
                    last_task_id=state.last_task if state else None,
                    last_manual_run=_time(state.last_manual if state else None),
                )
            )
        return views

    async def run_now(self, name: str) -> str:
        """Publish one task of the schedule now (besides its regular occurrences); its id."""
        schedule = self.get(name)
        producer = Producer.from_settings(
            self._settings, redis=self._redis, contracts=self._registry.contracts
        )
        now = time.time()
        task_id = await producer.publish(
            schedule.task_type,
            schedule.payload,
            priority=schedule.priority,
            correlation_id=f"schedule:{name}:manual",
            task_id=str(uuid.uuid4()),
        )
        await self._state.record_manual(name, now)
        return task_id

    async def pause(self, name: str) -> None:
        self.get(name)
        await self._state.set_paused(name, True)

    async def resume(self, name: str) -> None:
        self.get(name)
        await self._state.set_paused(name, False)


def _time(value: float | None) -> str | None:
    return format_time(value) if value is not None else None
