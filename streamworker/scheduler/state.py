"""Scheduler state in Redis (``Keyspace.scheduler_state``, one hash), so a restarted or
replacement scheduler continues where the last one stopped.

Fields per schedule ``NAME``: ``NAME:cursor`` (every occurrence up to this epoch second has
been handled: fired or dropped), ``NAME:last_fire`` and ``NAME:last_task`` (the last occurrence
published and its task id), ``NAME:paused`` and ``NAME:last_manual`` (the last ``schedules
run``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..keyspace import Keyspace
from ._scripts import load_script

__all__ = ["ScheduleState", "StateStore"]


@dataclass(frozen=True, slots=True)
class ScheduleState:
    cursor: int | None = None
    last_fire: int | None = None
    last_task: str | None = None
    paused: bool = False
    last_manual: float | None = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: str | None) -> int | None:
    return int(float(value)) if value else None


class StateStore:
    def __init__(self, redis: aioredis.Redis, keys: Keyspace) -> None:
        self._redis = redis
        self._keys = keys
        self._advance = load_script(redis, "scheduler_advance")

    async def read_all(self) -> dict[str, ScheduleState]:
        raw = await self._redis.hgetall(self._keys.scheduler_state)
        fields: dict[str, dict[str, str]] = {}
        for key, value in raw.items():
            name, _, attr = _text(key).rpartition(":")
            fields.setdefault(name, {})[attr] = _text(value)
        return {
            name: ScheduleState(
                cursor=_int(f.get("cursor")),
                last_fire=_int(f.get("last_fire")),
                last_task=f.get("last_task"),
                paused=f.get("paused") == "1",
                last_manual=float(f["last_manual"]) if f.get("last_manual") else None,
            )
            for name, f in fields.items()
        }

    async def read(self, name: str) -> ScheduleState:
        return (await self.read_all()).get(name, ScheduleState())

    async def advance(
        self,
        lease_value: str,
        name: str,
        cursor: int,
        *,
        fired_task: str | None = None,
    ) -> bool:
        """Move ``name``'s cursor forward to ``cursor`` (and record a fire at ``cursor`` when
        ``fired_task`` is given), only while ``lease_value`` is the current lease. False when
        the lease is not ours any more."""
        args: list[str | int] = [lease_value, f"{name}:cursor", cursor]
        if fired_task is not None:
            args += [f"{name}:last_fire", cursor, f"{name}:last_task", fired_task]
        written = await self._advance(
            keys=[self._keys.scheduler_leader, self._keys.scheduler_state], args=args
        )
        return bool(written)

    async def set_paused(self, name: str, paused: bool) -> None:
        if paused:
            await self._redis.hset(self._keys.scheduler_state, f"{name}:paused", "1")
        else:
            await self._redis.hdel(self._keys.scheduler_state, f"{name}:paused")

    async def record_manual(self, name: str, at: float) -> None:
        await self._redis.hset(self._keys.scheduler_state, f"{name}:last_manual", repr(at))
