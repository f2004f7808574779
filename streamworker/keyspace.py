"""Every Redis key name the service uses, built in one place (CONTRACT.md §1).

A *family* is one priority stream and the keys that Lua scripts touch together with it
(its delayed set and the dead-letter stream). Scripts only ever receive keys of a single
family, or of a single task, so every script runs within one hash slot.

Partitions (``STREAM_PARTITIONS=N``, README "Scaling out"): with N > 1, or on Redis Cluster,
each priority is split into N partitions. Every key of partition k carries the hash tag of k,
e.g. ``{p3}high_priority_tasks``, ``{p3}high_priority_tasks:delayed``, ``{p3}failed_tasks``,
so a partition lives in one slot and the partitions spread over the cluster's shards. With
N = 1 on a single node the names are exactly the contract's (``high_priority_tasks``, …).

On Redis Cluster the keys of one task (status hash, cancel marker) carry the tag of the
partition its id hashes to (:meth:`Keyspace.status_partition`), so a lookup needs only the id,
and the producer picks ids that hash to the task's own partition: then a task's status lives
in its stream's slot, and a batch's status writes are one script per partition. The
scheduler's keys share ``{scheduler}``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = [
    "MAX_PARTITIONS",
    "PRIORITIES",
    "Keyspace",
    "StreamFamily",
    "partition_tag",
    "priority_rank",
]

#: Upper bound of STREAM_PARTITIONS: far more shards than any one deployment needs.
MAX_PARTITIONS = 256

#: Highest first. The index is the rank used for strict ordering.
PRIORITIES: tuple[str, ...] = ("critical", "high", "normal", "low")
_RANK = {name: i for i, name in enumerate(PRIORITIES)}


def priority_rank(priority: str) -> int:
    """0 for critical … 3 for low; raises ValueError for an unknown priority."""
    try:
        return _RANK[priority]
    except KeyError:
        raise ValueError(
            f"unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}"
        ) from None


@cache
def partition_tag(index: int, count: int) -> str:
    """The hash tag (without braces) of partition ``index`` of ``count``.

    ``p<index>`` when its slot falls in the partition's own 1/count share of the slot space,
    else the first ``p<index>.<n>`` that does. A cluster made by ``redis-cli --cluster
    create`` gives each master a contiguous share of the slots, so the partitions spread
    evenly over the masters instead of wherever CRC16 happens to put ``p0``, ``p1``, …
    """
    if not 0 <= index < count:
        raise ValueError(f"partition {index} out of range 0..{count - 1}")
    low = index * REDIS_CLUSTER_HASH_SLOTS // count
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    n = 0
    while True:
        tag = f"p{index}" if n == 0 else f"p{index}.{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        n += 1


@dataclass(frozen=True, slots=True)
class StreamFamily:
    priority: str
    stream: str
    delayed: str
    dead_letters: str
    partition: int = 0

    @property
    def rank(self) -> int:
        return _RANK[self.priority]


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = ""
    #: STREAM_PARTITIONS: how many partitions each priority is split into.
    partitions: int = 1
    #: REDIS_CLUSTER: tag the keys of one task and of the scheduler too (see the module doc).
    cluster: bool = False
    _families: tuple[StreamFamily, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}")
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ValueError("the prefix must not contain { or } on Redis Cluster (hash tags)")
        families = tuple(
            self._build_family(priority, partition)
            for priority in PRIORITIES
            for partition in range(self.partitions)
        )
        object.__setattr__(self, "_families", families)

    @property
    def partitioned(self) -> bool:
        """Whether stream keys carry a partition hash tag (N > 1, or any cluster layout)."""
        return self.partitions > 1 or self.cluster

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _partition_key(self, partition: int, name: str) -> str:
        if not self.partitioned:
            return self._key(name)
        return f"{self.prefix}{{{partition_tag(partition, self.partitions)}}}{name}"

    def _build_family(self, priority: str, partition: int) -> StreamFamily:
        stream = self._partition_key(partition, f"{priority}_priority_tasks")
        return StreamFamily(
            priority=priority,
            stream=stream,
            delayed=f"{stream}:delayed",
            dead_letters=self._partition_key(partition, "failed_tasks"),
            partition=partition,
        )

    def family(self, priority: str, partition: int = 0) -> StreamFamily:
        rank = priority_rank(priority)
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} out of range 0..{self.partitions - 1}")
        return self._families[rank * self.partitions + partition]

    @property
    def families(self) -> tuple[StreamFamily, ...]:
        """Every family, highest priority first; the partitions of a priority in order."""
        return self._families

    def partition_families(self, partition: int) -> tuple[StreamFamily, ...]:
        """The families of one partition, highest priority first (one hash slot)."""
        return tuple(self._families[r * self.partitions + partition] for r in range(len(_RANK)))

    def partition_for(self, key: str) -> int:
        """The partition of a ``partition_key``: stable across processes and restarts."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(key.encode()) % self.partitions

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream of partition 0 (the only one when unpartitioned)."""
        return self._families[0].dead_letters

    @property
    def dead_letter_streams(self) -> tuple[str, ...]:
        """One dead-letter stream per partition, in partition order."""
        return tuple(self._families[p].dead_letters for p in range(self.partitions))

    def status_partition(self, task_id: str) -> int:
        """The partition whose hash tag a task's own keys carry on a cluster."""
        return self.partition_for(task_id)

    def task_groups(self, task_ids: Sequence[str]) -> list[list[int]]:
        """The indices of ``task_ids`` grouped so that the keys of a group's tasks share one
        hash slot: one group off a cluster, one per partition tag on a cluster."""
        if not self.cluster:
            return [list(range(len(task_ids)))] if task_ids else []
        groups: dict[int, list[int]] = {}
        for i, task_id in enumerate(task_ids):
            groups.setdefault(self.status_partition(task_id), []).append(i)
        return list(groups.values())

    def _task_key(self, name: str, task_id: str) -> str:
        if not self.cluster:
            return self._key(f"{name}:{task_id}")
        tag = partition_tag(self.status_partition(task_id), self.partitions)
        return f"{self.prefix}{{{tag}}}{name}:{task_id}"

    def task_key_pattern(self, name: str) -> str:
        """A SCAN pattern for every ``name`` key of a task (``task`` for the status hashes);
        the prefix is escaped."""
        prefix = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix)
        return f"{prefix}{{*}}{name}:*" if self.cluster else f"{prefix}{name}:*"

    def status(self, task_id: str) -> str:
        return self._task_key("task", task_id)

    def idempotency(self, key: str, partition: int = 0) -> str:
        """Lives with the partition's streams: publish_once checks it and adds in one step."""
        return self._partition_key(partition, f"idempotency:{key}")

    @property
    def notification_outbox(self) -> str:
        return self._key("notification_outbox")

    def cancelled(self, task_id: str) -> str:
        """Marker set by a cancel; the worker skips an entry whose marker exists."""
        return self._task_key("cancelled", task_id)

    def done(self, scope: str, task_id: str) -> str:
        """Consumer-side idempotency: a side effect ``scope`` of ``task_id`` already happened."""
        return self._key(f"done:{scope}:{task_id}")

    # -- scheduler ------------------------------------------------------------------------

    def _scheduler_key(self, name: str) -> str:
        return self._key(f"{{scheduler}}:{name}" if self.cluster else f"scheduler:{name}")

    @property
    def scheduler_leader(self) -> str:
        return self._scheduler_key("leader")

    @property
    def scheduler_state(self) -> str:
        """Hash: per schedule name, last fire time, paused flag and so on."""
        return self._scheduler_key("state")

    @property
    def scheduler_fence(self) -> str:
        """Counter: each new leader term takes the next value as its fencing token."""
        return self._scheduler_key("fence")

    def schedule_fire(self, name: str, fire_at: int) -> str:
        """Set NX before an occurrence is published, so it is published once."""
        return self._scheduler_key(f"fired:{name}:{fire_at}")

    # -- resilience around external services ----------------------------------------------

    def breaker(self, name: str) -> str:
        return self._key(f"breaker:{name}")

    def rate_limit(self, name: str) -> str:
        return self._key(f"ratelimit:{name}")

    # -- observability --------------------------------------------------------------------

    @property
    def audit_events(self) -> str:
        return self._key("audit_events")

    @property
    def audit_index(self) -> str:
        """The audit stream's entry counts (``audit_append.lua``); on a cluster in the stream's
        slot (its hash tag is the stream's whole name, which carries no tag of its own)."""
        stream = self.audit_events
        return f"{{{stream}}}:index" if self.cluster else f"{stream}:index"
