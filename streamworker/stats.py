"""Queue statistics from Redis itself (used by the CLI, the HTTP API and the metrics).

The backlog of a priority is lag + pending: entries not yet delivered to the group plus
entries delivered and not yet acknowledged. Redis reports ``lag`` as NULL once entries were
deleted from the stream (we XDEL every acknowledged entry), so then it is computed instead:
an entry still in the stream is either pending or not yet delivered (acknowledged ones are
deleted), so ``lag = XLEN - pending`` (``lag_exact`` says which way it was found).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from .keyspace import Keyspace

__all__ = ["PriorityStats", "QueueStats", "collect_stats"]


class PriorityStats(msgspec.Struct, kw_only=True):
    priority: str
    stream: str
    length: int
    pending: int
    lag: int
    lag_exact: bool
    backlog: int
    oldest_pending_age_seconds: float | None
    consumers: int
    delayed: int


class QueueStats(msgspec.Struct, kw_only=True):
    group: str
    priorities: list[PriorityStats]
    delayed: int
    dead_letters: int
    backlog: int
    collected_at: float


def _get(mapping: dict[Any, Any], name: str) -> Any:
    if name in mapping:
        return mapping[name]
    return mapping.get(name.encode())


def _id_ms(entry_id: Any) -> int | None:
    if entry_id is None:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    try:
        return int(text.split("-", 1)[0])
    except ValueError:
        return None


async def collect_stats(redis: aioredis.Redis, keys: Keyspace, group: str) -> QueueStats:
    families = keys.families
    pipe = redis.pipeline(transaction=False)
    for family in families:
        pipe.xlen(family.stream)
        pipe.xinfo_groups(family.stream)
        pipe.xpending(family.stream, group)
        pipe.zcard(family.delayed)
    pipe.xlen(keys.dead_letters)
    results = await pipe.execute(raise_on_error=False)
    now_ms = time.time() * 1000
    out: list[PriorityStats] = []
    for i, family in enumerate(families):
        length, groups, pending_info, delayed = results[4 * i : 4 * i + 4]
        length = length if isinstance(length, int) else 0
        delayed = delayed if isinstance(delayed, int) else 0
        info: dict[Any, Any] = {}
        if isinstance(groups, list):
            for g in groups:
                name = _get(g, "name")
                if (name.decode() if isinstance(name, bytes) else name) == group:
                    info = g
        pending = 0
        oldest_age = None
        if isinstance(pending_info, dict):
            pending = int(pending_info.get("pending") or 0)
            oldest_ms = _id_ms(pending_info.get("min"))
            if pending and oldest_ms is not None:
                oldest_age = round(max(0.0, now_ms - oldest_ms) / 1000, 3)
        raw_lag = _get(info, "lag") if info else None
        lag_exact = raw_lag is not None
        lag = int(raw_lag) if raw_lag is not None else max(0, length - pending)
        consumers = int(_get(info, "consumers") or 0) if info else 0
        out.append(
            PriorityStats(
                priority=family.priority,
                stream=family.stream,
                length=length,
                pending=pending,
                lag=lag,
                lag_exact=lag_exact,
                backlog=lag + pending,
                oldest_pending_age_seconds=oldest_age,
                consumers=consumers,
                delayed=delayed,
            )
        )
    dead = results[-1] if isinstance(results[-1], int) else 0
    return QueueStats(
        group=group,
        priorities=out,
        delayed=sum(p.delayed for p in out),
        dead_letters=dead,
        backlog=sum(p.backlog for p in out),
        collected_at=time.time(),
    )
