"""Task status hashes and their transitions (CONTRACT.md §5).

Writes are queued onto a pipeline the caller already sends (the publish, the batch of acks),
so keeping status costs the worker no extra round trip. Terminal states expire after
``COMPLETED_TTL_SECONDS``; the others stay until the task ends.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .keyspace import Keyspace

__all__ = ["STATES", "TERMINAL_STATES", "StatusStore", "TaskStatus"]

STATES = ("queued", "scheduled", "running", "retrying", "completed", "failed", "cancelled")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


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
