"""Task status hashes and their transitions (CONTRACT.md §5).

Writes are queued onto a pipeline the caller already sends (the publish, the batch of acks),
so keeping status costs the worker no extra round trip. Terminal states expire after
``COMPLETED_TTL_SECONDS``; the others stay until the task ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from .keyspace import Keyspace
from .wire import Delivery, format_time

__all__ = ["STATES", "TERMINAL_STATES", "StatusStore", "TaskStatus"]

STATES = ("queued", "scheduled", "running", "retrying", "completed", "failed", "cancelled")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})

# Many status writes in one call: per key, HSET then EXPIRE (terminal state) or PERSIST, exactly
# what ``write`` queues as two commands, for one reply per batch instead of two per task. The
# keys are passed as KEYS, never built inside the script. On Redis Cluster a script may only
# touch one slot: there the batch is split by the partition tag the keys carry (one call per
# partition; for a worker's batch usually just one).
# KEYS: status hashes. ARGV[1]: ttl of terminal states (s). ARGV[2]: MessagePack array with,
# per key, {1 if terminal, 2 if the key is new (a task id just made), else 0, field, value,
# ...} (strings).
_WRITE_MANY_SCRIPT = """
local rows = cmsgpack.unpack(ARGV[2])
for i = 1, #KEYS do
  local row = rows[i]
  redis.call('HSET', KEYS[i], unpack(row, 2))
  if row[1] == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
  elseif row[1] == 0 then
    redis.call('PERSIST', KEYS[i])
  end  -- 2: the first write of a task id just made, so there is no TTL to remove
end
return #KEYS
"""
# The common write, tasks that completed, without a row per task: the hash holds everything
# else already (its first write set the task's fields, and a non-terminal state has no TTL
# to keep), so only status and the times change. A batch's completions share one
# completed_at (the time the batch was put together), and the tasks of one read share their
# started_at (the read's time), so the keys come grouped by read. A hash that had no status
# (an entry that named its own task_id without being published through us) is reported, for
# its other fields to be written from its entry (``Broker.new_status_rows``).
# KEYS: status hashes. ARGV[1]: ttl (s), ARGV[2]: completed_at, then per group of KEYS in
# order: its number of keys, its started_at. Returns the (1-based) indices of new hashes.
_COMPLETED_SCRIPT = """
local ttl, at = ARGV[1], ARGV[2]
local new, k = {}, 0
for g = 3, #ARGV, 2 do
  local started = ARGV[g + 1]
  for _ = 1, tonumber(ARGV[g]) do
    k = k + 1
    local key = KEYS[k]
    if redis.call('HSET', key, 'status', 'completed', 'completed_at', at,
        'started_at', started) == 3 then
      new[#new + 1] = k
    end
    redis.call('EXPIRE', key, ttl)
  end
end
return new
"""
_rows_encoder = msgspec.msgpack.Encoder()


class TaskStatus(msgspec.Struct, kw_only=True):
    task_id: str
    task_type: str | None = None
    status: str
    priority: str | None = None
    created_at: str | None = None
    scheduled_for: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    retry_count: int = 0
    last_error: str | None = None


class StatusStore:
    def __init__(self, keys: Keyspace, completed_ttl_seconds: int, *, enabled: bool = True) -> None:
        self._keys = keys
        self._ttl = completed_ttl_seconds
        self.enabled = enabled

    def write(self, pipe: Any, task_id: str, state: str, **fields: str | int | None) -> None:
        """Queue the write of ``state`` (and the given fields) on ``pipe``."""
        if not self.enabled:
            return
        key = self._keys.status(task_id)
        mapping: dict[str, str | int] = {"status": state, "task_id": task_id}
        for name, value in fields.items():
            if value is not None:
                mapping[name] = value
        pipe.hset(key, mapping=mapping)
        if state in TERMINAL_STATES:
            pipe.expire(key, self._ttl)
        else:
            pipe.persist(key)

    def write_many(
        self, pipe: Any, writes: Iterable[tuple[str, str, Mapping[str, str | int | None]]]
    ) -> None:
        """Queue many ``(task_id, state, fields)`` writes on ``pipe`` as one script call:
        the same hashes and expiries as calling :meth:`write` for each. Give at most one
        write per task."""
        if not self.enabled:
            return
        records: list[tuple[str, list[str | int]]] = []
        for task_id, state, fields in writes:
            row: list[str | int] = [
                1 if state in TERMINAL_STATES else 0,
                "status", state,
                "task_id", task_id,
            ]  # fmt: skip
            for name, value in fields.items():
                if value is not None:
                    row += (name, value if isinstance(value, str) else str(value))
            records.append((task_id, row))
        self._queue_rows(pipe, records)

    def write_completed(
        self, pipe: Any, completed: Mapping[str, Delivery], completed_at: str
    ) -> list[str]:
        """Queue ``completed`` (at ``completed_at``) for the tasks of ``completed`` (task id:
        its delivery, whose read time is its ``started_at``): one script call for them all
        (per partition on a cluster). Leaves what :meth:`write` would, except that
        ``task_id`` is not written again. Returns the task ids in the order the single
        call's keys take (the script reports new hashes by position), or [] when nothing
        was queued or the call is split (cluster)."""
        if not (self.enabled and completed):
            return []
        by_read: dict[float, list[str]] = {}
        for task_id, delivery in completed.items():
            group = by_read.get(delivery.read_at)
            if group is None:
                by_read[delivery.read_at] = [task_id]
            else:
                group.append(task_id)
        order: list[str] = []
        counts: list[int | str] = []
        for read_at, task_ids in by_read.items():
            order += task_ids
            counts += (len(task_ids), format_time(read_at))
        groups = self._key_groups(order)
        if len(groups) == 1:
            keys = groups[0][0]
            # execute_command: redis-py's cluster pipeline refuses the eval method, not EVAL
            pipe.execute_command(
                "EVAL", _COMPLETED_SCRIPT, len(keys), *keys, self._ttl, completed_at, *counts
            )
            return order
        for keys, members in groups:
            started = [format_time(completed[order[i]].read_at) for i in members]
            args: list[int | str] = []
            for value in started:  # one group per key: a cluster's tasks keep their gate rows
                args += (1, value)
            pipe.execute_command(
                "EVAL", _COMPLETED_SCRIPT, len(keys), *keys, self._ttl, completed_at, *args
            )
        return []

    def _queue_rows(self, pipe: Any, records: Sequence[tuple[str, list[str | int]]]) -> None:
        """One ``_WRITE_MANY_SCRIPT`` call per slot group for ``(task_id, row)``s."""
        for keys, rows in self._groups(records):  # EVAL as a command: see write_many
            pipe.execute_command(
                "EVAL", _WRITE_MANY_SCRIPT, len(keys), *keys, self._ttl, _rows_encoder.encode(rows)
            )

    def _groups(
        self, records: Sequence[tuple[str, list[str | int]]]
    ) -> list[tuple[list[str], list[list[str | int]]]]:
        """``(task_id, row)``s as (status keys, rows) per slot group."""
        groups = self._key_groups([task_id for task_id, _ in records])
        return [(keys, [records[i][1] for i in members]) for keys, members in groups]

    def _key_groups(self, task_ids: Sequence[str]) -> list[tuple[list[str], Sequence[int]]]:
        """The status keys of ``task_ids`` and their indices, per slot group: one group off a
        cluster, one per partition tag the ids carry on one (a script stays in one slot)."""
        if not task_ids:
            return []
        if not self._keys.cluster:
            # Each key is the same prefix and the task id (keyspace.status).
            prefix = self._keys.status("")
            return [([prefix + task_id for task_id in task_ids], range(len(task_ids)))]
        status_key = self._keys.status
        return [
            ([status_key(task_ids[i]) for i in members], members)
            for members in self._keys.task_groups(task_ids)
        ]

    def write_new(
        self,
        pipe: Any,
        records: Sequence[tuple[str, list[str]]],
        fresh: Sequence[bool] | None = None,
    ) -> None:
        """Queue the first state of many new tasks as one script call on ``pipe``.

        Each record is ``(task_id, [field, value, ...])`` with ``status`` (a non-terminal
        state) and ``task_id`` among the fields: the publisher builds these rows directly.
        ``fresh`` marks the ids the publisher just made: their hash cannot exist yet, so no
        expiry needs removing (a given id may be an old task's, with a terminal state's TTL).
        """
        if not self.enabled or not records:
            return
        flags = [0] * len(records) if fresh is None else [2 if f else 0 for f in fresh]
        self._queue_rows(
            pipe,
            [(task_id, [flag, *row]) for (task_id, row), flag in zip(records, flags, strict=True)],
        )

    def write_first_if_absent(self, pipe: Any, task_id: str, row: Sequence[str]) -> None:
        """Queue the first status of a task already published (Redis Cluster, where it cannot
        ride in the publish script): ``status`` only if no worker has written one yet, plus
        the fields that never change. Whatever the order, a late write never sets a task back.
        """
        if not self.enabled:
            return
        it = iter(row)
        fields = dict(zip(it, it, strict=True))
        key = self._keys.status(task_id)
        pipe.hsetnx(key, "status", fields.pop("status"))
        fields.pop("retry_count", None)  # a worker may already have counted a retry
        pipe.hset(key, mapping=fields)

    async def read(self, redis: Any, task_id: str) -> TaskStatus | None:
        raw = await redis.hgetall(self._keys.status(task_id))
        if not raw:
            return None
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return TaskStatus(
            task_id=data.get("task_id", task_id),
            task_type=data.get("task_type"),
            status=data.get("status", "unknown"),
            priority=data.get("priority"),
            created_at=data.get("created_at"),
            scheduled_for=data.get("scheduled_for"),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            retry_count=int(data.get("retry_count", "0") or 0),
            last_error=data.get("last_error"),
        )
