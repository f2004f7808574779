"""The dead-letter stream as a service: list, show, replay, purge (CONTRACT.md §4).

One module used by every front end (the ``dlq`` commands, the HTTP API), so they cannot
disagree about what an entry is or what replay does.

- Listing is newest first (the failure you are chasing is usually the latest) and pages by
  entry id: pass the ``next_cursor`` of one page as ``after`` to get the next.
- Listed entries never carry the payload; only :meth:`DeadLetters.get` returns it, for the
  developer's own inspection (``dlq show``). Nothing here logs a payload or an error text.
- Replay goes oldest first, one atomic ``replay.lua`` call per entry (pipelined in chunks):
  the original fields go back on their source stream with ``retry_count`` 0 and
  ``replayed_from`` set, and the dead letter is removed in the same step. An entry that is
  gone, or whose source is not one of our priority streams, is refused and left as it was.
- With STREAM_PARTITIONS > 1 each partition has its own dead-letter stream; this service
  shows them as one. An id is then ``<ms>-<seq>@<partition>`` (a plain ``<ms>-<seq>`` is
  looked up in every partition), and listings merge the partitions, newest first.
"""

from __future__ import annotations

import builtins
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import anyio
import msgspec
import redis.asyncio as aioredis

from .broker import Broker, connect_to
from .keyspace import Keyspace, StreamFamily
from .settings import Settings
from .status import StatusStore
from .wire import Fields

__all__ = [
    "DeadLetter",
    "DeadLetterDetail",
    "DeadLetterPage",
    "DeadLetters",
    "InvalidDeadLetterId",
    "ReplayItem",
    "ReplaySummary",
]

log = logging.getLogger("streamworker.deadletters")

_ID = re.compile(r"^\d{1,20}-\d{1,20}(@\d{1,4})?$")
#: Fields the dead-letter step adds; ``show`` lists them apart from the original fields.
PROVENANCE_FIELDS = frozenset(
    {
        "dlq_reason",
        "dlq_error",
        "source_stream",
        "source_id",
        "group",
        "consumer",
        "deliveries",
        "failed_at",
    }
)
_SCAN_BATCH = 200
_REPLAY_CHUNK = 100

ReplayOutcome = Literal["replayed", "would_replay", "failed", "skipped"]
Progress = Callable[[int, int], None]  # (entries done, entries matched)


class InvalidDeadLetterId(ValueError):
    """Not a stream entry id (``<ms>-<seq>``)."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One dead-letter entry, decoded; never the payload."""

    id: str
    task_id: str | None
    task_type: str | None
    reason: str | None
    error: str | None
    source_stream: str | None
    priority: str | None  # from the source stream; None when it is not one of ours
    source_id: str | None
    consumer: str | None
    deliveries: int | None
    retry_count: int | None
    replayed_from: str | None  # set when this task had been replayed before and failed again
    failed_at: str | None
    age_seconds: float


class DeadLetterDetail(DeadLetter, frozen=True, kw_only=True):
    """``dlq show``: the entry plus its payload and every other original field."""

    payload: str | None
    fields: dict[str, str]


class DeadLetterPage(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[DeadLetter]
    total: int  # entries in failed_tasks, whatever the filters
    next_cursor: str | None  # pass as ``after`` for the next (older) page; None at the end


class ReplayItem(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    task_id: str | None
    outcome: ReplayOutcome
    new_id: str | None = None  # the entry id on the source stream
    detail: str | None = None  # why it failed or was skipped


class ReplaySummary(msgspec.Struct, kw_only=True):
    dry_run: bool
    matched: int = 0
    replayed: int = 0
    would_replay: int = 0
    failed: int = 0
    skipped: int = 0
    items: list[ReplayItem] = msgspec.field(default_factory=list)

    def add(self, item: ReplayItem) -> None:
        self.items.append(item)
        if item.outcome == "replayed":
            self.replayed += 1
        elif item.outcome == "would_replay":
            self.would_replay += 1
        elif item.outcome == "failed":
            self.failed += 1
        else:
            self.skipped += 1


def check_id(entry_id: str) -> str:
    if not _ID.match(entry_id):
        raise InvalidDeadLetterId(
            f"{entry_id!r} is not a dead-letter id (expected <milliseconds>-<sequence>, "
            "e.g. 1700000000000-0, with @<partition> when the streams are partitioned)"
        )
    return entry_id


def _split_id(entry_id: str) -> tuple[str, int | None]:
    """``(stream entry id, partition or None)`` of a checked id."""
    raw, _, partition = check_id(entry_id).partition("@")
    return raw, int(partition) if partition else None


def _order(raw_id: str) -> tuple[int, int]:
    ms, _, seq = raw_id.partition("-")
    return int(ms), int(seq)


def _text(raw: bytes | None) -> str | None:
    # backslashreplace: a malformed entry can hold any bytes; show them, do not fail on them
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def _int(raw: bytes | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _id_seconds(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000.0


class _Walk:
    """Pages through one partition's dead-letter stream, newest first or oldest first."""

    def __init__(
        self, redis: aioredis.Redis, stream: str, partition: int, bound: str, newest_first: bool
    ) -> None:
        self._redis = redis
        self._stream = stream
        self.partition = partition
        self._bound = bound
        self._newest_first = newest_first
        self._buffer: builtins.list[tuple[str, Fields]] = []
        self._done = False

    async def head(self) -> tuple[str, Fields] | None:
        if not self._buffer and not self._done:
            if self._newest_first:
                batch: Any = await self._redis.xrevrange(
                    self._stream, max=self._bound, min="-", count=_SCAN_BATCH
                )
            else:
                batch = await self._redis.xrange(
                    self._stream, min=self._bound, max="+", count=_SCAN_BATCH
                )
            self._buffer = [(raw.decode(), fields) for raw, fields in batch]
            self._buffer.reverse()  # pop() from the end
            self._done = len(batch) < _SCAN_BATCH
            if self._buffer:
                self._bound = f"({self._buffer[0][0]}"
        return self._buffer[-1] if self._buffer else None

    def pop(self) -> tuple[str, Fields]:
        """Take the entry :meth:`head` returned."""
        return self._buffer.pop()


class DeadLetters:
    """list / get / replay / purge / size over one deployment's ``failed_tasks``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        group: str,
        *,
        status: StatusStore | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        owns_redis: bool = False,
    ) -> None:
        self.redis = redis
        self._owns_redis = owns_redis  # a client passed in (e.g. the API's) stays open
        self.keys = keys
        self.status = status or StatusStore(keys, 172800, enabled=False)
        self._broker = Broker(redis, keys, group, status=self.status)
        self._families = {f.stream: f for f in keys.families}
        self._streams = keys.dead_letter_streams  # one per partition
        self._clock = clock
        self._sleep = sleep  # a test clock can stand in for both

    @classmethod
    def from_settings(cls, settings: Settings, redis: aioredis.Redis | None = None) -> DeadLetters:
        """The service for one deployment; it opens (and :meth:`aclose` closes) its own client
        unless ``redis`` is given."""
        keys = settings.keyspace()
        status = StatusStore(keys, settings.completed_ttl_seconds, enabled=settings.track_status)
        return cls(
            redis or connect_to(settings),
            keys,
            settings.group,
            status=status,
            owns_redis=redis is None,
        )

    # -- reading ----------------------------------------------------------------------------

    async def size(self) -> int:
        if len(self._streams) == 1:
            return int(await self.redis.xlen(self._streams[0]))
        pipe = self.redis.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xlen(stream)
        return sum(int(n) for n in await pipe.execute())

    def _public_id(self, raw_id: str, partition: int) -> str:
        return raw_id if len(self._streams) == 1 else f"{raw_id}@{partition}"

    def _partitions_of(self, partition: int | None) -> range:
        if partition is None:
            return range(len(self._streams))
        if not 0 <= partition < len(self._streams):
            raise InvalidDeadLetterId(
                f"partition {partition} does not exist (there are {len(self._streams)})"
            )
        return range(partition, partition + 1)

    async def _merged(
        self, walks: builtins.list[_Walk], newest_first: bool
    ) -> AsyncIterator[tuple[str, int, Fields]]:
        """The entries of every walk as one sequence ordered by (id, partition)."""
        while True:
            best: _Walk | None = None
            best_key: tuple[int, int, int] | None = None
            for walk in walks:
                head = await walk.head()
                if head is None:
                    continue
                key = (*_order(head[0]), walk.partition)
                if best_key is None or (key > best_key if newest_first else key < best_key):
                    best, best_key = walk, key
            if best is None:
                return
            raw_id, fields = best.pop()
            yield raw_id, best.partition, fields

    async def list(
        self,
        *,
        task_type: str | None = None,
        reason: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> DeadLetterPage:
        """Up to ``limit`` entries, newest first, older than the cursor ``after`` if given."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        entries: builtins.list[DeadLetter] = []
        walks = []
        for partition, stream in enumerate(self._streams):
            bound = "+"
            if after:
                raw, after_partition = _split_id(after)
                # Order is (id, partition), newest first: an equal id in a lower partition
                # still comes after the cursor.
                inclusive = after_partition is not None and partition < after_partition
                bound = raw if inclusive else f"({raw}"
            walks.append(_Walk(self.redis, stream, partition, bound, newest_first=True))
        now = self._clock()
        total = await self.size()
        async for raw_id, partition, fields in self._merged(walks, newest_first=True):
            entry = self._decode(self._public_id(raw_id, partition), fields, now)
            if (task_type is None or entry.task_type == task_type) and (
                reason is None or entry.reason == reason
            ):
                entries.append(entry)
                if len(entries) == limit:
                    return DeadLetterPage(entries=entries, total=total, next_cursor=entry.id)
        return DeadLetterPage(entries=entries, total=total, next_cursor=None)

    async def get(self, entry_id: str) -> DeadLetterDetail | None:
        """The entry with its payload and all its fields, or None when there is no such entry."""
        (found,), _ = await self._fetch_raw([entry_id])
        if found is None:
            return None
        public_id, fields = found
        entry = self._decode(public_id, fields, self._clock())
        others = {
            k.decode("utf-8", "backslashreplace"): _text(v) or ""
            for k, v in fields.items()
            if k != b"payload" and k.decode("utf-8", "replace") not in PROVENANCE_FIELDS
        }
        return DeadLetterDetail(
            **{f: getattr(entry, f) for f in entry.__struct_fields__},
            payload=_text(fields.get(b"payload")),
            fields=others,
        )

    def _decode(self, entry_id: str, fields: Fields, now: float) -> DeadLetter:
        source = _text(fields.get(b"source_stream"))
        family = self._families.get(source) if source else None
        return DeadLetter(
            id=entry_id,
            task_id=_text(fields.get(b"task_id")),
            task_type=_text(fields.get(b"task_type")),
            reason=_text(fields.get(b"dlq_reason")),
            error=_text(fields.get(b"dlq_error")),
            source_stream=source,
            priority=family.priority if family else None,
            source_id=_text(fields.get(b"source_id")),
            consumer=_text(fields.get(b"consumer")),
            deliveries=_int(fields.get(b"deliveries")),
            retry_count=_int(fields.get(b"retry_count", b"0")),  # absent: none failed yet
            replayed_from=_text(fields.get(b"replayed_from")),
            failed_at=_text(fields.get(b"failed_at")),
            age_seconds=round(max(0.0, now - _id_seconds(entry_id)), 3),
        )

    # -- replay -----------------------------------------------------------------------------

    async def replay(
        self,
        *,
        ids: Sequence[str] | None = None,
        task_type: str | None = None,
        reason: str | None = None,
        all: bool = False,
        dry_run: bool = False,
        rate_per_second: float | None = None,
        progress: Progress | None = None,
    ) -> ReplaySummary:
        """Replay the chosen entries: ``ids``, or those matching ``task_type`` and/or
        ``reason``, or ``all``. ``dry_run`` checks and counts without changing anything.
        ``rate_per_second`` paces the replay so a large backlog does not flood the workers."""
        chosen = sum((ids is not None, task_type is not None or reason is not None, all))
        if chosen != 1:
            raise ValueError("choose exactly one of: ids, task_type/reason, all")
        if rate_per_second is not None and not 0 < rate_per_second < math.inf:
            raise ValueError("rate_per_second must be a number > 0")
        summary = ReplaySummary(dry_run=dry_run)
        if ids is not None:
            wanted = list(dict.fromkeys(check_id(i) for i in ids))
            selected, missing = await self._fetch(wanted)
            summary.matched = len(wanted)
            for entry_id in missing:
                summary.add(
                    ReplayItem(id=entry_id, task_id=None, outcome="failed", detail="not_found")
                )
        else:
            selected = await self._select(task_type, reason)
            summary.matched = len(selected)
        done = len(summary.items)
        if progress:
            progress(done, summary.matched)

        chunk = _REPLAY_CHUNK
        if rate_per_second is not None:
            # ~10 chunks a second at most, so the pacing is smooth at any rate
            chunk = max(1, min(_REPLAY_CHUNK, int(rate_per_second / 10)))
        started = self._clock()
        sent = 0
        for start in range(0, len(selected), chunk):
            part = selected[start : start + chunk]
            if rate_per_second is not None and sent and not dry_run:
                wait = started + sent / rate_per_second - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            await self._replay_chunk(part, summary, dry_run)
            sent += len(part)
            if progress:
                progress(len(summary.items), summary.matched)
        if not dry_run:
            log.info(
                "dead_letters_replayed",
                extra={
                    # what was asked for (an audit trail of who replays what comes from the
                    # front end's own log line); never payloads or error texts
                    "selection": "ids" if ids is not None else "all" if all else "filter",
                    "task_type": task_type,
                    "dlq_reason": reason,
                    "matched": summary.matched,
                    "replayed": summary.replayed,
                    "failed": summary.failed,
                    "skipped": summary.skipped,
                },
            )
        return summary

    async def _fetch_raw(
        self, wanted: Sequence[str]
    ) -> tuple[builtins.list[tuple[str, Fields] | None], builtins.list[str]]:
        """Per wanted id, ``(public id, fields)`` or None; and the ids not found. An id without
        a partition is looked for in every partition (the first found wins)."""
        lookups: builtins.list[builtins.list[tuple[str, int]]] = []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in wanted:
            raw, partition = _split_id(entry_id)
            places = [(raw, p) for p in self._partitions_of(partition)]
            for raw_id, p in places:
                pipe.xrange(self._streams[p], min=raw_id, max=raw_id, count=1)
            lookups.append(places)
        replies: builtins.list[Any] = await pipe.execute()
        found: builtins.list[tuple[str, Fields] | None] = []
        missing: builtins.list[str] = []
        at = 0
        for entry_id, places in zip(wanted, lookups, strict=True):
            hit = None
            for raw_id, p in places:
                reply = replies[at]
                at += 1
                if reply and hit is None:
                    hit = (self._public_id(raw_id, p), reply[0][1])
            found.append(hit)
            if hit is None:
                missing.append(entry_id)
        return found, missing

    async def _fetch(
        self, wanted: Sequence[str]
    ) -> tuple[builtins.list[DeadLetter], builtins.list[str]]:
        hits, missing = await self._fetch_raw(wanted)
        now = self._clock()
        found = [self._decode(public_id, fields, now) for public_id, fields in filter(None, hits)]
        return found, missing

    async def _select(self, task_type: str | None, reason: str | None) -> builtins.list[DeadLetter]:
        """Every matching entry, oldest first (so replays keep their original order)."""
        out: builtins.list[DeadLetter] = []
        now = self._clock()
        walks = [
            _Walk(self.redis, stream, p, "-", newest_first=False)
            for p, stream in enumerate(self._streams)
        ]
        async for raw_id, partition, fields in self._merged(walks, newest_first=False):
            entry = self._decode(self._public_id(raw_id, partition), fields, now)
            if (task_type is None or entry.task_type == task_type) and (
                reason is None or entry.reason == reason
            ):
                out.append(entry)
        return out

    async def _replay_chunk(
        self, entries: Sequence[DeadLetter], summary: ReplaySummary, dry_run: bool
    ) -> None:
        targets: builtins.list[tuple[DeadLetter, StreamFamily]] = []
        for entry in entries:
            family = self._families.get(entry.source_stream or "")
            if family is None:
                summary.add(
                    ReplayItem(
                        id=entry.id,
                        task_id=entry.task_id,
                        outcome="failed",
                        detail="unknown_source_stream"
                        if entry.source_stream
                        else "missing_source_stream",
                    )
                )
            elif dry_run:
                summary.add(ReplayItem(id=entry.id, task_id=entry.task_id, outcome="would_replay"))
            else:
                targets.append((entry, family))
        if not targets:
            return
        replies = await self._broker.replay_dead_letters(
            [(f, self._dead_letter_stream(e.id), _split_id(e.id)[0]) for e, f in targets]
        )
        requeued: builtins.list[tuple[str, StreamFamily, DeadLetter]] = []
        for (entry, family), reply in zip(targets, replies, strict=True):
            if isinstance(reply, Exception):
                item = ReplayItem(
                    id=entry.id,
                    task_id=entry.task_id,
                    outcome="failed",
                    detail=f"redis_error: {type(reply).__name__}",
                )
            elif reply[0] == "replayed":
                item = ReplayItem(
                    id=entry.id, task_id=entry.task_id, outcome="replayed", new_id=reply[1]
                )
                if reply[2]:
                    requeued.append((reply[2], family, entry))
            elif reply[0] == "gone":
                # selected a moment ago, removed since (replayed or purged by someone else)
                item = ReplayItem(
                    id=entry.id, task_id=entry.task_id, outcome="skipped", detail="gone"
                )
            else:
                detail = (
                    "partition_mismatch" if reply[0] == "partition_mismatch" else "source_mismatch"
                )
                item = ReplayItem(
                    id=entry.id, task_id=entry.task_id, outcome="failed", detail=detail
                )
            summary.add(item)
        await self._mark_queued(requeued)

    def _dead_letter_stream(self, public_id: str) -> str:
        return self._streams[_split_id(public_id)[1] or 0]

    async def _mark_queued(self, requeued: Sequence[tuple[str, StreamFamily, DeadLetter]]) -> None:
        """Status back to ``queued`` for the replayed tasks (on a cluster: on a single Redis
        the replay script wrote it): one round trip per chunk."""
        if not self.status.enabled or not requeued or self._broker.scripts_write_status:
            return
        pipe = self.redis.pipeline(transaction=False)
        for task_id, _, _ in requeued:
            # the failed run's times no longer describe this task; last_error stays as history
            pipe.hdel(self.keys.status(task_id), "started_at", "completed_at")
        self.status.write_many(
            pipe,
            [
                (
                    task_id,
                    "queued",
                    {"task_type": e.task_type, "priority": f.priority, "retry_count": 0},
                )
                for task_id, f, e in requeued
            ],
        )
        await pipe.execute()

    # -- purge ------------------------------------------------------------------------------

    async def purge(self, older_than_seconds: float | None = None) -> int:
        """Delete dead letters older than ``older_than_seconds`` (all when None); returns how
        many. Age is by entry id, i.e. by the Redis server's clock when it was dead-lettered."""
        pipe = self.redis.pipeline(transaction=False)
        if older_than_seconds is None:
            for stream in self._streams:
                pipe.xtrim(stream, maxlen=0, approximate=False)
            return sum(int(n) for n in await pipe.execute())
        if older_than_seconds < 0:
            raise ValueError("older_than_seconds must be >= 0")
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        min_id = max(0, now_ms - int(older_than_seconds * 1000))
        for stream in self._streams:
            pipe.xtrim(stream, minid=min_id, approximate=False)
        return sum(int(n) for n in await pipe.execute())

    async def aclose(self) -> None:
        if self._owns_redis:
            await self.redis.aclose()
