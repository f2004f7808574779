"""``estimated_completion`` for a submitted task, from the live backlog and the recent rate.

A sampler in the API process reads, once a second, the backlog of every priority (lag +
pending, the same numbers as ``streamworker stats``) and the consumer group's
``entries-read`` counters (XINFO GROUPS). The growth of ``entries-read`` over the last minute
is the rate at which the workers take entries; the worker is not changed for it and nothing
is written to Redis. A task waits for the backlog at its priority and above (strict priority
serves those first), so::

    estimated_completion = max(now + backlog_ahead / rate, scheduled_for) + RUN_ALLOWANCE

With no backlog ahead the task starts at once (or when due). When work is waiting but
nothing was taken during the window (no worker running), there is no honest estimate and the
answer is ``None`` (``null`` in the response). In weighted priority mode lower priorities get
a share earlier, so the estimate is then an upper bound.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..keyspace import PRIORITIES, Keyspace, priority_rank
from ..stats import collect_stats

__all__ = ["RUN_ALLOWANCE_SECONDS", "BacklogSampler"]

log = logging.getLogger(__name__)

#: Time allowed for the task's own run: the API cannot know how long a handler takes.
RUN_ALLOWANCE_SECONDS = 1.0
#: A rate needs samples at least this far apart, so one burst does not look like a trend.
_MIN_SPAN_SECONDS = 2.0


class BacklogSampler:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        group: str,
        *,
        interval: float = 1.0,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._redis = redis
        self._keys = keys
        self._group = group
        self._interval = interval
        self._window = window
        self._backlog: dict[str, int] = {}
        # (monotonic time, entries-read per priority; None where Redis could not tell)
        self._samples: deque[tuple[float, dict[str, int | None]]] = deque()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            try:
                await self.sample()
            except (RedisError, OSError) as exc:
                # Submit reports an unreachable Redis itself; keep the last numbers.
                log.debug("backlog_sample_failed", extra={"error_type": type(exc).__name__})
            await anyio.sleep(self._interval)

    async def sample(self) -> None:
        stats = await collect_stats(self._redis, self._keys, self._group)
        pipe = self._redis.pipeline(transaction=False)
        for family in self._keys.families:
            pipe.xinfo_groups(family.stream)
        groups = await pipe.execute(raise_on_error=False)
        read: dict[str, int | None] = {}
        for family, info in zip(self._keys.families, groups, strict=True):
            # A priority split into partitions: the sum, unknown if any partition is.
            value = _entries_read(info, self._group)
            before = read.get(family.priority, 0)
            read[family.priority] = None if value is None or before is None else before + value
        now = self._clock()
        self._backlog = {p.priority: p.backlog for p in stats.priorities}
        self._samples.append((now, read))
        # Keep one sample at or beyond the window's start so the span covers the window.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Entries taken by the group per second over the window; None until measurable."""
        total: float | None = None
        for priority in PRIORITIES:
            # Redis reports no counter for a group that has read nothing since it was created
            # at an explicit id, so each priority is measured over its own known samples.
            known = [
                (t, read[priority]) for t, read in self._samples if read.get(priority) is not None
            ]
            if len(known) < 2:
                continue
            (t0, before), (t1, after) = known[0], known[-1]
            # A counter that went backwards belongs to a re-created group: skip it.
            if t1 - t0 < _MIN_SPAN_SECONDS or before is None or after is None or after < before:
                continue
            total = (total or 0.0) + (after - before) / (t1 - t0)
        return total

    def backlog_ahead(self, priority: str) -> int:
        rank = priority_rank(priority)
        return sum(n for p, n in self._backlog.items() if priority_rank(p) <= rank)

    def estimate(self, priority: str, due: float, now: float) -> float | None:
        """Epoch seconds when a task submitted now at ``priority``, due at ``due``, should end."""
        ahead = self.backlog_ahead(priority)
        rate = self.rate()
        if ahead == 0:
            return max(now, due) + RUN_ALLOWANCE_SECONDS
        if not rate:
            return None
        return max(now + ahead / rate, due) + RUN_ALLOWANCE_SECONDS


def _entries_read(info: Any, group: str) -> int | None:
    if not isinstance(info, list):
        return None  # no such stream yet (or an error): nothing known
    for g in info:
        name = g.get("name", g.get(b"name"))
        if (name.decode() if isinstance(name, bytes) else name) == group:
            value = g.get("entries-read", g.get(b"entries-read"))
            return int(value) if value is not None else None
    return None
