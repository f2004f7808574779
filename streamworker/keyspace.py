"""Every Redis key name the service uses, built in one place (CONTRACT.md §1).

A *family* is one priority stream and the keys that Lua scripts touch together with it
(its delayed set and the dead-letter stream). Scripts only ever receive keys of a single
family, so a later cluster layout can give each family a hash tag without touching callers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRIORITIES", "Keyspace", "StreamFamily", "priority_rank"]

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


@dataclass(frozen=True, slots=True)
class StreamFamily:
    priority: str
    stream: str
    delayed: str
    dead_letters: str

    @property
    def rank(self) -> int:
        return _RANK[self.priority]


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = ""

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def family(self, priority: str) -> StreamFamily:
        priority_rank(priority)
        stream = self._key(f"{priority}_priority_tasks")
        return StreamFamily(
            priority=priority,
            stream=stream,
            delayed=f"{stream}:delayed",
            dead_letters=self.dead_letters,
        )

    @property
    def families(self) -> tuple[StreamFamily, ...]:
        return tuple(self.family(p) for p in PRIORITIES)

    @property
    def dead_letters(self) -> str:
        return self._key("failed_tasks")

    def status(self, task_id: str) -> str:
        return self._key(f"task:{task_id}")

    def idempotency(self, key: str) -> str:
        return self._key(f"idempotency:{key}")

    @property
    def notification_outbox(self) -> str:
        return self._key("notification_outbox")

    def cancelled(self, task_id: str) -> str:
        """Marker set by a cancel; the worker skips an entry whose marker exists."""
        return self._key(f"cancelled:{task_id}")

    def done(self, scope: str, task_id: str) -> str:
        """Consumer-side idempotency: a side effect ``scope`` of ``task_id`` already happened."""
        return self._key(f"done:{scope}:{task_id}")

    # -- scheduler ------------------------------------------------------------------------

    @property
    def scheduler_leader(self) -> str:
        return self._key("scheduler:leader")

    @property
    def scheduler_state(self) -> str:
        """Hash: per schedule name, last fire time, paused flag and so on."""
        return self._key("scheduler:state")

    @property
    def scheduler_fence(self) -> str:
        """Counter: each new leader term takes the next value as its fencing token."""
        return self._key("scheduler:fence")

    def schedule_fire(self, name: str, fire_at: int) -> str:
        """Set NX before an occurrence is published, so it is published once."""
        return self._key(f"scheduler:fired:{name}:{fire_at}")

    # -- resilience around external services ----------------------------------------------

    def breaker(self, name: str) -> str:
        return self._key(f"breaker:{name}")

    def rate_limit(self, name: str) -> str:
        return self._key(f"ratelimit:{name}")

    # -- observability --------------------------------------------------------------------

    @property
    def audit_events(self) -> str:
        return self._key("audit_events")
