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

from .keyspace import PRIORITIES, Keyspace

__all__ = ["PriorityStats", "QueueStats", "collect_stats"]


class PriorityStats(msgspec.Struct, kw_only=True):
    priority: str
    #: The stream; for a priority split into partitions, its name without the hash tag.
    stream: str
    length: int
    pending: int
    lag: int
    lag_exact: bool
    backlog: int
    oldest_pending_age_seconds: float | None
    consumers: int
    delayed: int
    #: The partition of a per-partition row; None for a whole priority.
    partition: int | None = None


class QueueStats(msgspec.Struct, kw_only=True):
    group: str
    #: One row per priority, summed over its partitions.
    priorities: list[PriorityStats]
    delayed: int
    dead_letters: int
    backlog: int
    collected_at: float
    #: One row per (priority, partition) when STREAM_PARTITIONS > 1, else empty.
    partitions: list[PriorityStats] = msgspec.field(default_factory=list)


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
    for stream in keys.dead_letter_streams:
        pipe.xlen(stream)
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
                partition=family.partition,
            )
        )
    dead = sum(r for r in results[4 * len(families) :] if isinstance(r, int))
    if keys.partitions == 1:
        for row in out:
            row.partition = None
        per_priority, per_partition = out, []
    else:
        per_priority = [_sum_priority(keys, out, p) for p in PRIORITIES]
        per_partition = out
    return QueueStats(
        group=group,
        priorities=per_priority,
        delayed=sum(p.delayed for p in out),
        dead_letters=dead,
        backlog=sum(p.backlog for p in out),
        collected_at=time.time(),
        partitions=per_partition,
    )


def _sum_priority(keys: Keyspace, rows: list[PriorityStats], priority: str) -> PriorityStats:
    mine = [r for r in rows if r.priority == priority]
    ages = [r.oldest_pending_age_seconds for r in mine if r.oldest_pending_age_seconds is not None]
    return PriorityStats(
        priority=priority,
        stream=f"{keys.prefix}{priority}_priority_tasks",
        length=sum(r.length for r in mine),
        pending=sum(r.pending for r in mine),
        lag=sum(r.lag for r in mine),
        lag_exact=all(r.lag_exact for r in mine),
        backlog=sum(r.backlog for r in mine),
        oldest_pending_age_seconds=max(ages) if ages else None,
        consumers=max((r.consumers for r in mine), default=0),  # a worker reads every partition
        delayed=sum(r.delayed for r in mine),
    )
