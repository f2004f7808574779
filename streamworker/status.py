"""Task status hashes and their transitions (CONTRACT.md §5).

Writes are queued onto a pipeline the caller already sends (the publish, the batch of acks),
so keeping status costs the worker no extra round trip. Terminal states expire after
``COMPLETED_TTL_SECONDS``; the others stay until the task ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .keyspace import Keyspace

__all__ = ["STATES", "TERMINAL_STATES", "StatusStore", "TaskStatus"]

STATES = ("queued", "scheduled", "running", "retrying", "completed", "failed", "cancelled")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})

# HSET + PERSIST per key, as ``write`` queues them, in one call. The keys are passed as KEYS
# (never built inside the script). On a future Redis Cluster these hashes spread over slots, so
# ``write_new`` would group them by slot there.
_WRITE_NEW_SCRIPT = """
local rows = cmsgpack.unpack(ARGV[1])
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], unpack(rows[i]))
  redis.call('PERSIST', KEYS[i])
end
return #KEYS
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

    def write_new(self, pipe: Any, records: Sequence[tuple[str, list[str]]]) -> None:
        """Queue the first state of many new tasks as one script call on ``pipe``.

        Each record is ``(task_id, [field, value, ...])`` with ``status`` (a non-terminal
        state) and ``task_id`` among the fields. The hashes are the ones :meth:`write` would
        leave, for one reply instead of two per task, so a publisher's batch costs one round
        trip with a constant number of replies.
        """
        if not self.enabled or not records:
            return
        status_key = self._keys.status
        keys = [status_key(task_id) for task_id, _ in records]
        rows = [row for _, row in records]
        pipe.eval(_WRITE_NEW_SCRIPT, len(keys), *keys, _rows_encoder.encode(rows))

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
