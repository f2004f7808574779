"""Read-mostly housekeeping over the service's own keys, for the maintenance handlers (reached
through ``ctx.maintenance``, never a Redis client of their own).

* ``status_summary``: walks the status hashes with SCAN (never KEYS: it would block Redis),
  counts them by state and by how they will go (TTL), and, when asked, gives a finished
  task's hash that lost its TTL its retention again. Removal itself is Redis' TTL.
* ``dead_letter_summary``: how many dead letters, oldest and newest age, counts by reason and
  by task type. Ages come from the entry ids (the time of dead-lettering).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgspec
import redis.asyncio as aioredis

from .keyspace import Keyspace
from .status import TERMINAL_STATES

__all__ = ["DeadLetterSummary", "Maintenance", "StatusSummary"]


class StatusSummary(msgspec.Struct, kw_only=True):
    scanned: int
    by_state: dict[str, int]
    expiring: int  # have a TTL: finished tasks, removed by Redis when it runs out
    expiring_within_24h: int
    without_ttl: int  # queued, scheduled, running or retrying tasks (kept until they end)
    repaired: int  # finished tasks' hashes that had lost their TTL and got it back


class DeadLetterSummary(msgspec.Struct, kw_only=True):
    total: int
    examined: int
    oldest_age_seconds: float | None
    newest_age_seconds: float | None
    by_reason: dict[str, int]
    by_task_type: dict[str, int]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


class Maintenance:
    def __init__(self, redis: aioredis.Redis, keys: Keyspace, completed_ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = completed_ttl_seconds

    async def status_summary(self, *, repair: bool = True, batch: int = 500) -> StatusSummary:
        # The prefix is the operator's: it is escaped so a '*' in it is not a wildcard.
        pattern = self._keys.task_key_pattern("task")
        by_state: Counter[str] = Counter()
        scanned = expiring = soon = without_ttl = repaired = 0
        keys: list[bytes] = []

        async def flush() -> None:
            nonlocal scanned, expiring, soon, without_ttl, repaired
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "status")
                pipe.ttl(key)
            replies = await pipe.execute()
            fix = self._redis.pipeline(transaction=False)
            for key, state_raw, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
                if state_raw is None:
                    continue  # expired between SCAN and HGET
                state = _text(state_raw)
                scanned += 1
                by_state[state] += 1
                if ttl >= 0:
                    expiring += 1
                    soon += ttl <= 86400
                elif state in TERMINAL_STATES and repair:
                    fix.expire(key, self._ttl)
                    repaired += 1
                    expiring += 1
                else:
                    without_ttl += 1
            if len(fix):
                await fix.execute()
            keys.clear()

        async for key in self._redis.scan_iter(match=pattern, count=batch, _type="HASH"):
            keys.append(key)
            if len(keys) >= batch:
                await flush()
        if keys:
            await flush()
        return StatusSummary(
            scanned=scanned,
            by_state=dict(sorted(by_state.items())),
            expiring=expiring,
            expiring_within_24h=soon,
            without_ttl=without_ttl,
            repaired=repaired,
        )

    async def dead_letter_summary(
        self, *, max_entries: int = 100_000, page: int = 500, now: float | None = None
    ) -> DeadLetterSummary:
        now_ms = (time.time() if now is None else now) * 1000
        streams = self._keys.dead_letter_streams  # one per partition
        pipe = self._redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
            pipe.xrevrange(stream, count=1)
        replies = await pipe.execute()
        total = sum(int(n) for n in replies[0::3])
        firsts = [_entry_ms(r[0][0]) for r in replies[1::3] if r]
        lasts = [_entry_ms(r[0][0]) for r in replies[2::3] if r]
        by_reason: Counter[str] = Counter()
        by_type: Counter[str] = Counter()
        examined = 0
        for stream in streams:
            start: str = "-"
            while examined < max_entries:
                entries = await self._redis.xrange(
                    stream, min=start, count=min(page, max_entries - examined)
                )
                if not entries:
                    break
                for _, fields in entries:
                    fields = fields or {}
                    by_reason[_text(fields.get(b"dlq_reason", b"unknown"))] += 1
                    by_type[_text(fields.get(b"task_type", b"(none)"))] += 1
                examined += len(entries)
                start = "(" + _text(entries[-1][0])  # exclusive: the next page after this id
        return DeadLetterSummary(
            total=total,
            examined=examined,
            oldest_age_seconds=round((now_ms - min(firsts)) / 1000, 3) if firsts else None,
            newest_age_seconds=round((now_ms - max(lasts)) / 1000, 3) if lasts else None,
            by_reason=dict(by_reason.most_common()),
            by_task_type=dict(by_type.most_common(50)),
        )
