"""The one module that talks to Redis for the queue itself.

Every multi-step change of a task's place (retry, dead letter, promotion, idempotent publish)
is a named Lua script in ``scripts/``, so it happens atomically. Pipelines that carry scripts
hold only idempotent commands besides them: after a Redis restart the scripts are gone
(NOSCRIPT), and such a pipeline is simply sent again once they are loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import KeptConnection, read_replies, use_hiredis_packing
from .keyspace import Keyspace, StreamFamily
from .status import StatusStore
from .wire import MAX_FIELDS, Delivery, Fields, pack_fields, parse_time

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["Broker", "CommandList", "ReplayReply", "StatusWrite", "connect", "connect_to"]

log = logging.getLogger("streamworker.broker")

_SCRIPTS = (
    "read_batch",
    "retry",
    "dead_letter",
    "promote_due",
    "publish_once",
    "begin_batch",
    "replay",
    "publish_batch",
    "reclaim",
    "renew_leases",
    "remove_idle_consumer",
    "ack_delete",
)

#: Share of DEAD_LETTER_MAX_LENGTH past which ``dead_letters_near_capacity`` is logged.
DEAD_LETTER_WARN_RATIO = 0.9
#: At most one near-capacity warning per this many seconds and process.
_NEAR_CAPACITY_EVERY = 60.0
#: Trims are logged at once, then at most once per this many seconds with the count since.
_TRIMMED_EVERY = 10.0

#: replay.lua's answer: ("replayed", new id, task id) | ("gone", "", "") | ("mismatch", src, "")
ReplayReply = tuple[str, str, str]

#: (task_id, state, extra fields) to write with the next round trip.
StatusWrite = tuple[str, str, Mapping[str, str | int | None]]


def connect(url: str, *, cluster: bool = False, **options: Any) -> aioredis.Redis:
    """An asyncio client (hiredis parser when installed); bytes in, bytes out.

    ``cluster=True`` gives redis-py's cluster client instead: ``url`` names any node, the
    others are discovered. It speaks the same commands for everything the service sends
    (every script and multi-key command stays within one hash slot, see ``keyspace``), so
    it is typed as the plain client here.

    A client made from a URL gets no retries by default, so the first command on a pooled
    connection that a Redis restart has broken failed even though Redis was back. A few quick
    retries (on a fresh connection) cover that; a Redis that stays down still gives the caller
    a ConnectionError within about a second. A retried write may run twice if only its reply
    was lost: at-least-once, as everywhere else.
    """
    options.setdefault("retry", Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3))
    if not url.lower().startswith("unix:"):
        options.setdefault("socket_keepalive", True)  # TCP only: a Unix socket refuses it
    if cluster:
        client: Any = RedisCluster.from_url(url, decode_responses=False, **options)
        return cast("aioredis.Redis", client)
    options.setdefault("health_check_interval", 15)
    options.setdefault("retry_on_timeout", False)
    pool = aioredis.ConnectionPool.from_url(url, decode_responses=False, **options)
    use_hiredis_packing(pool)
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def connect_to(settings: Settings, **options: Any) -> aioredis.Redis:
    """The client for ``settings``: REDIS_URL, and the cluster client with REDIS_CLUSTER."""
    return connect(settings.require_redis_url(), cluster=settings.redis_cluster, **options)


_msgpack = msgspec.msgpack.Encoder()


def _field_text(value: bytes | None) -> str:
    return value.decode(errors="replace")[:200] if value else ""


def _is_future(raw: bytes) -> bool:
    try:
        return parse_time(raw.decode()) > time.time() + 0.001
    except (ValueError, UnicodeDecodeError):
        return False  # a bad date: the runner dead-letters the entry


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes] | Mapping[bytes, bytes] | None) -> Fields:
    if not flat:
        return {}
    if isinstance(flat, Mapping):
        return dict(flat)
    it = iter(flat)
    return dict(zip(it, it))  # noqa: B905 -- Redis sends field lists whole (strict costs 1/3)


_PROVENANCE = frozenset(
    name.encode()
    for name in (
        "task_id", "task_type", "dlq_reason", "dlq_error", "source_stream", "source_id",
        "group", "consumer", "failed_at",
    )
)  # fmt: skip


def _fit_for_lua(
    fields: Mapping[str | bytes, str | bytes],
) -> Mapping[str | bytes, str | bytes]:
    """At most ``MAX_FIELDS`` of an entry's own fields, plus the provenance fields.

    A Lua script cannot pass more than about 8000 arguments to one command, so an entry with
    thousands of fields (refused as malformed) keeps only its first ones in the dead letter,
    and says how many it dropped, rather than failing to be dead-lettered at all.
    """
    if len(fields) <= MAX_FIELDS:
        return fields
    kept: dict[str | bytes, str | bytes] = {}
    dropped = 0
    for key, value in fields.items():
        name = key.encode() if isinstance(key, str) else key
        if name in _PROVENANCE or len(kept) < MAX_FIELDS:
            kept[key] = value
        else:
            dropped += 1
    kept["dlq_fields_dropped"] = str(dropped)
    return kept


class CommandList(list[tuple[Any, ...]]):
    """Commands collected as a pipeline collects them (``execute_command``), to be sent with
    :meth:`Broker.send_in_order`."""

    def execute_command(self, *args: Any) -> None:
        self.append(args)


class Settlement:
    """Acknowledgements and status writes to send together (:meth:`Broker.settle`, or in the
    same round trip as a read: :meth:`Broker.read`'s ``settle``): entry ids per family,
    general status writes, and the tasks that completed (task id: its delivery), which share
    one ``completed_at``. ``done`` tells whether Redis took all of them."""

    __slots__ = (
        "acks", "completed", "completed_at", "done", "items", "new_statuses", "order", "writes",
    )  # fmt: skip

    def __init__(
        self,
        acks: Mapping[int, Sequence[bytes]],
        writes: Sequence[StatusWrite] = (),
        completed: Mapping[str, Delivery] | None = None,
        completed_at: str = "",
        items: Any = None,
    ) -> None:
        self.acks = acks
        self.writes = writes
        self.completed = completed if completed is not None else {}
        self.completed_at = completed_at
        self.items = items  # what the sender gives back if not done
        self.done = False
        #: Where the completed write's reply is among the commands, and its keys' task ids.
        self.order: tuple[int, list[str]] | None = None
        #: Completed tasks whose status hash did not exist (entries that named their own
        #: task_id without being published through us): the acker writes their other fields
        #: after (``Broker.new_status_rows``).
        self.new_statuses: list[str] = []


class Broker:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        group: str,
        *,
        status: StatusStore,
        dead_letter_maxlen: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.status = status
        self.families: tuple[StreamFamily, ...] = keys.families
        self._stream_index = {f.stream.encode(): i for i, f in enumerate(self.families)}
        self._dead_letter_maxlen = dead_letter_maxlen
        self._source = {
            name: (resources.files(__package__) / "scripts" / f"{name}.lua").read_text()
            for name in _SCRIPTS
        }
        self._sha: dict[str, str] = {}
        # A connection send_in_order keeps between calls instead of giving it back to the
        # pool: taking one from redis-py's pool and giving it back costs about 10 us of CPU,
        # once a batch on the worker's hot path. One that failed is never kept.
        self._connection = KeptConnection(redis)
        self.dead_letters_trimmed = 0  # total entries the cap has dropped (for metrics)
        self._trimmed_unlogged = 0
        self._trimmed_logged_at = -_TRIMMED_EVERY
        self._near_capacity_logged_at = -_NEAR_CAPACITY_EVERY

    @property
    def scripts_write_status(self) -> bool:
        """Whether the scripts that queue a task write its status too (``replay.lua``,
        ``promote_due.lua``): on a single Redis with statuses tracked, where a script can
        reach a task's status key from the entry it moves."""
        return self.status.enabled and not self.keys.cluster

    # -- set-up ---------------------------------------------------------------------------

    async def load_scripts(self) -> None:
        for name, source in self._source.items():
            self._sha[name] = await self.redis.script_load(source)

    async def ensure_groups(self) -> None:
        """Create the consumer group on every stream (at id 0, so nothing is skipped)."""
        for family in self.families:
            try:
                await self.redis.xgroup_create(family.stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name not in self._sha:
            await self.load_scripts()
        try:
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load_scripts()
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)

    async def _run_pipeline(
        self, build: Callable[[Any], None], *, atomic: bool = False
    ) -> list[Any]:
        """Send a pipeline built by ``build``; resend once if Redis had lost the scripts.
        ``atomic`` sends it as one MULTI/EXEC transaction (single Redis only)."""
        if not self._sha:
            await self.load_scripts()
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=atomic)
            build(pipe)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await self.load_scripts()
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")

    def _evalsha(self, pipe: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        # execute_command, not pipe.evalsha: redis-py's cluster pipeline refuses the method
        # (it cannot know the script stays in one slot; ours always do), not the command.
        pipe.execute_command("EVALSHA", self._sha[name], len(keys), *keys, *args)

    # -- reading --------------------------------------------------------------------------

    async def read(
        self,
        consumer: str,
        total: int,
        order: Sequence[int],
        quotas: Sequence[int],
        start_ids: Sequence[str],
        *,
        settle: Settlement | None = None,
    ) -> list[Delivery]:
        """Up to ``total`` entries across the families in ``order``, in one round trip.

        With ``settle`` on a single Redis, its acknowledgements and status writes (as
        :meth:`settle` sends them) go first in the same round trip; ``settle.done`` says
        whether all of them were taken. On a cluster they are left to the caller."""
        keys = [self.families[i].stream for i in order]
        args: list[Any] = [self.group, consumer, total]
        for quota, start in zip(quotas, start_ids, strict=True):
            args.append(quota)
            args.append(start)
        if settle is not None and not self.keys.cluster:
            flat = await self._read_settling(keys, args, settle)
        else:
            flat = await self._eval("read_batch", keys, args)
        now = time.time()
        out = []
        for j in range(0, len(flat), 4):
            # _pairs inline: the script sends a whole field list (empty for a deleted entry)
            it = iter(flat[j + 2] or ())
            fields = dict(zip(it, it))  # noqa: B905 -- strict costs a third more
            out.append(Delivery(order[flat[j] - 1], flat[j + 1], fields, now, flat[j + 3]))
        return out

    async def _read_settling(
        self, keys: Sequence[str], args: Sequence[Any], settle: Settlement
    ) -> Any:
        """The read script's reply, with ``settle``'s commands sent before it on the same
        connection in the same write (one round trip where there were two)."""
        if not self._sha:
            await self.load_scripts()
        commands = CommandList()
        self._settle_commands(commands, settle)
        first = len(commands)
        commands.execute_command("EVALSHA", self._sha["read_batch"], len(keys), *keys, *args)
        replies = await self.send_in_order([commands], raise_errors=False)
        if isinstance(replies[first], NoScriptError):
            # The read did not run: load the scripts and send everything again (the acks
            # and status writes may run twice, which changes nothing but the report of
            # which status hashes the first run made).
            self._note_new_statuses(settle, replies)
            await self.load_scripts()
            replies = await self.send_in_order([commands], raise_errors=False)
        # A failed acknowledgement goes back to the acker, which retries it on its own.
        settle.done = not any(isinstance(reply, Exception) for reply in replies[:first])
        if settle.done:
            self._note_new_statuses(settle, replies)
        flat = replies[first]
        if isinstance(flat, Exception):
            raise flat
        return flat

    async def wait_for_entries(
        self, consumer: str, block_ms: int, families: Sequence[int] | None = None
    ) -> list[Delivery]:
        """Block until any of the streams (of ``families``, default all) has a new entry; at
        most one per stream is returned. On a cluster, pass families of one hash slot."""
        chosen = self.families if families is None else [self.families[i] for i in families]
        streams: dict[Any, Any] = {f.stream: ">" for f in chosen}
        try:
            reply: Any = await self.redis.xreadgroup(
                self.group, consumer, streams, count=1, block=block_ms
            )
        except ResponseError as exc:
            if not str(exc).startswith("UNBLOCKED"):
                raise
            # The server turned into a replica under us (a failover): for the worker that is
            # the same as a dropped connection, to be waited out and retried.
            raise RedisConnectionError("Redis changed role during a blocking read") from None
        now = time.time()
        out = []
        for stream, entries in reply or ():
            index = self._stream_index[stream]
            for entry_id, fields in entries:
                out.append(Delivery(index, entry_id, _pairs(fields), now))
        return out

    async def begin(self, deliveries: Sequence[Delivery], started_at: str) -> int:
        """Pass a batch through the start gate (``begin_batch.lua``): flag the deliveries whose
        task was cancelled and mark the others ``running``, in one round trip. Deliveries
        already gated (``gated``) are skipped. Returns how many of the others were cancelled.

        Used on Redis Cluster when statuses are tracked: there a cancel cannot reach a task's
        entry from its status (another slot), so it marks the status and the worker checks
        before it runs. On a single Redis a cancel deletes the unread entry instead
        (``cancel_task.lua``) and nothing needs checking."""
        keys: list[str] = []
        rows: list[list[str]] = []
        gated: list[Delivery] = []
        task_ids: list[str] = []
        for delivery in deliveries:
            raw_id = delivery.task_id_field
            if delivery.gated or not raw_id:
                continue  # gated by read(), or never published through us (no task_id)
            task_id = raw_id.decode(errors="replace")
            task_ids.append(task_id)
            keys.append(self.keys.cancelled(task_id))
            keys.append(self.keys.status(task_id))
            rows.append(self._running_row(delivery, task_id, started_at))
            gated.append(delivery)
        if not gated:
            return 0
        groups = self.keys.task_groups(task_ids)
        if len(groups) > 1:
            # On a cluster, one call per partition tag the tasks' keys carry (a script stays
            # in one slot); ids from our producer carry their stream's partition, so a batch
            # read from one partition is usually one group.
            order = [i for members in groups for i in members]

            def build(pipe: Any) -> None:
                for members in groups:
                    self._evalsha(
                        pipe,
                        "begin_batch",
                        [k for i in members for k in keys[2 * i : 2 * i + 2]],
                        [_msgpack.encode([rows[i] for i in members])],
                    )

            replies = await self._run_pipeline(build)
            flags = [0] * len(gated)
            for i, flag in zip(order, (f for reply in replies for f in reply), strict=True):
                flags[i] = flag
        else:
            flags = await self._eval("begin_batch", keys, [_msgpack.encode(rows)])
        cancelled = 0
        for delivery, flag in zip(gated, flags, strict=True):
            delivery.gated = True
            if flag:
                delivery.cancelled = True
                cancelled += 1
        return cancelled

    def _running_row(self, delivery: Delivery, task_id: str, started_at: str) -> list[str]:
        fields = delivery.fields
        due = fields.get(b"scheduled_for")
        if due is not None and _is_future(due):
            return []  # will be parked again by the runner, not started
        # status and started_at first: begin_batch.lua writes only those two when the hash
        # exists (the publish, a retry or a replay wrote the rest), the whole row otherwise.
        row = [
            "status", "running",
            "started_at", started_at,
            "task_id", task_id,
            "priority", self.families[delivery.family_index].priority,
            "retry_count", _field_text(fields.get(b"retry_count")) or "0",
        ]  # fmt: skip
        for name in (b"task_type", b"created_at"):
            value = fields.get(name)
            if value:
                row += (name.decode(), _field_text(value))
        return row

    # -- recovery ---------------------------------------------------------------------------

    async def reclaim(
        self, family_index: int, consumer: str, min_idle_ms: int, cursor: bytes, count: int
    ) -> tuple[bytes, list[Delivery], int]:
        """XAUTOCLAIM up to ``count`` stale entries of one stream, walking from ``cursor``.

        Returns the next cursor (``0-0`` when the walk is complete), the claimed deliveries
        with their delivery counts, and how many pending ids had lost their stream entry.
        """
        family = self.families[family_index]
        next_cursor, flat, deleted = await self._eval(
            "reclaim", [family.stream], [self.group, consumer, min_idle_ms, cursor, count]
        )
        now = time.time()
        out = [
            Delivery(family_index, flat[j], _pairs(flat[j + 1]), now, int(flat[j + 2]))
            for j in range(0, len(flat), 3)
        ]
        return next_cursor, out, int(deleted)

    async def renew_leases(self, consumer: str, entries: Mapping[int, Sequence[bytes]]) -> int:
        """Reset the idle time of entries this consumer is running; returns how many were
        no longer ours (taken over by another consumer)."""

        def build(pipe: Any) -> None:
            for index, ids in entries.items():
                self._evalsha(
                    pipe,
                    "renew_leases",
                    [self.families[index].stream],
                    [self.group, consumer, *ids],
                )

        if not any(entries.values()):
            return 0
        results = await self._run_pipeline(build)
        return sum(len(lost) for lost in results)

    async def consumers(self, family_index: int) -> list[dict[str, Any]]:
        stream = self.families[family_index].stream
        try:
            infos: list[dict[str, Any]] = await self.redis.xinfo_consumers(stream, self.group)
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return []
            raise
        return [{_text(k): v for k, v in info.items()} for info in infos]

    async def remove_idle_consumer(self, family_index: int, name: str, min_idle_ms: int) -> bool:
        """Delete ``name`` from the group of one stream if it owns nothing and is idle."""
        removed = await self._eval(
            "remove_idle_consumer",
            [self.families[family_index].stream],
            [self.group, name, min_idle_ms],
        )
        return bool(removed)

    # -- settling -------------------------------------------------------------------------

    async def settle(self, settlement: Settlement) -> None:
        """Acknowledge and delete finished entries, and write their statuses: one round trip.

        One script call per stream acknowledges and removes (ack_delete.lua): removing right
        after acknowledging keeps memory bounded, and it only ever removes acknowledged
        entries.
        """

        if self.keys.cluster:
            await self._run_pipeline(lambda pipe: self._settle_commands(pipe, settlement))
            return
        # Off a cluster, straight onto one connection (send_in_order) rather than through a
        # redis-py Pipeline object, which cost a quarter of the batch's client CPU here
        # (about 375 against 285 us for 30 acks and statuses). Every command in it can run
        # twice harmlessly, so after NOSCRIPT (Redis lost its scripts) it is all sent again.
        if not self._sha:
            await self.load_scripts()
        commands = CommandList()
        self._settle_commands(commands, settlement)
        if not commands:
            return
        replies = await self.send_in_order([commands], raise_errors=False)
        self._note_new_statuses(settlement, replies)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self.load_scripts()
            replies = await self.send_in_order([commands], raise_errors=False)
            self._note_new_statuses(settlement, replies)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def _settle_commands(self, pipe: Any, settlement: Settlement) -> None:
        for index, ids in settlement.acks.items():
            if ids:
                stream = self.families[index].stream
                self._evalsha(pipe, "ack_delete", [stream], [self.group, *ids])
        # one script call each, one reply each, for the batch
        at = len(pipe)
        order = self.status.write_completed(pipe, settlement.completed, settlement.completed_at)
        if order:
            settlement.order = (at, order)
        self.status.write_many(pipe, settlement.writes)

    def _note_new_statuses(self, settlement: Settlement, replies: Sequence[Any]) -> None:
        """Read from the completed write's reply which hashes it made (see ``status.py``)."""
        if settlement.order is None:
            return
        at, order = settlement.order
        reply = replies[at]
        if isinstance(reply, list) and reply:
            known = settlement.new_statuses
            known += (order[int(k) - 1] for k in reply if order[int(k) - 1] not in known)

    def new_status_rows(self, settlement: Settlement) -> list[StatusWrite]:
        """The fields a completed write could not know, for the hashes it made (see
        ``Settlement.new_statuses``), taken from each task's entry as the publish would
        have written them; for the acker to queue (a status without them would show no
        type, priority or creation time)."""
        rows: list[StatusWrite] = []
        for task_id in settlement.new_statuses:
            delivery = settlement.completed[task_id]
            fields = delivery.fields
            rows.append(
                (
                    task_id,
                    "completed",
                    {
                        "task_type": _field_text(fields.get(b"task_type")) or None,
                        "priority": self.families[delivery.family_index].priority,
                        "created_at": _field_text(fields.get(b"created_at")) or None,
                        "retry_count": _field_text(fields.get(b"retry_count")) or "0",
                    },
                )
            )
        settlement.new_statuses = []
        return rows

    async def retry(
        self,
        delivery: Delivery,
        next_fields: Mapping[str | bytes, str | bytes],
        due_ms: int,
        write: StatusWrite | None,
    ) -> bool:
        """Ack the entry and park its next attempt until ``due_ms``, atomically. On a single
        Redis the status write is part of the same step: a task parked as ``scheduled`` (a
        deferral) must never be seen by the promoter, or a cancel, with its earlier status."""
        family = self.families[delivery.family_index]
        member = pack_fields(next_fields)
        atomic = not self.keys.cluster
        keys = [family.stream, family.delayed]
        args = [self.group, delivery.entry_id, due_ms, member]

        def build(pipe: Any) -> None:
            if atomic:
                # The script's text, not its SHA: after NOSCRIPT inside MULTI the status
                # write would have run without the parking, and a cancel could slip between.
                pipe.execute_command("EVAL", self._source["retry"], len(keys), *keys, *args)
            else:
                self._evalsha(pipe, "retry", keys, args)
            if write is not None:
                self.status.write(pipe, write[0], write[1], **write[2])

        results = await self._run_pipeline(build, atomic=atomic)
        return bool(results[0])

    async def dead_letter(
        self,
        delivery: Delivery,
        fields: Mapping[str | bytes, str | bytes],
        write: StatusWrite | None,
    ) -> bytes | None:
        """Move the entry to the dead-letter stream and ack it, atomically."""
        family = self.families[delivery.family_index]
        flat: list[str | bytes] = []
        for key, value in _fit_for_lua(fields).items():
            flat.append(key)
            flat.append(value)

        def build(pipe: Any) -> None:
            self._evalsha(
                pipe,
                "dead_letter",
                [family.stream, family.dead_letters],
                [self.group, delivery.entry_id, self._dead_letter_maxlen, *flat],
            )
            if write is not None:
                self.status.write(pipe, write[0], write[1], **write[2])

        results = await self._run_pipeline(build)
        if not results[0]:
            return None
        entry_id, length, trimmed = results[0]
        self._watch_dead_letter_cap(int(length), int(trimmed))
        return bytes(entry_id)

    def _watch_dead_letter_cap(self, length: int, trimmed: int) -> None:
        """Report the capped dead-letter stream filling up, and every entry the cap dropped.

        Throttled per process so a burst of failures cannot flood the log; the counts are
        carried over, so each dropped entry is counted in some ``dead_letters_trimmed`` line
        (or in ``dead_letters_trimmed`` on the broker until the next one)."""
        cap = self._dead_letter_maxlen
        if cap <= 0:
            return
        now = time.monotonic()
        if trimmed > 0:
            self.dead_letters_trimmed += trimmed
            self._trimmed_unlogged += trimmed
            if now - self._trimmed_logged_at >= _TRIMMED_EVERY:
                log.warning(
                    "dead_letters_trimmed",
                    extra={
                        "trimmed": self._trimmed_unlogged,
                        "trimmed_total": self.dead_letters_trimmed,
                        "size": length,
                        "cap": cap,
                    },
                )
                self._trimmed_unlogged = 0
                self._trimmed_logged_at = now
        elif (
            length >= DEAD_LETTER_WARN_RATIO * cap
            and now - self._near_capacity_logged_at >= _NEAR_CAPACITY_EVERY
        ):
            log.warning("dead_letters_near_capacity", extra={"size": length, "cap": cap})
            self._near_capacity_logged_at = now

    async def replay_dead_letters(
        self, items: Sequence[tuple[StreamFamily, str, str]]
    ) -> list[ReplayReply | Exception]:
        """Run replay.lua for each (target family, dead-letter stream, entry id), pipelined:
        one round trip. The dead-letter stream is the family's own (one hash slot); one that
        is not (partitions changed since) answers ``partition_mismatch``.

        Each entry is replayed atomically on its own; one entry's error does not stop the
        others. Sending the pipeline again after NOSCRIPT is safe: an entry already replayed
        answers 'gone'.

        On a single Redis with statuses tracked (``scripts_write_status``), the script puts
        each task's status back to ``queued`` too; on a cluster the caller does."""
        if not self._sha:
            await self.load_scripts()
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            sent = [(f, i) for f, stream, i in items if stream == f.dead_letters]
            for family, entry_id in sent:
                args = [entry_id]
                if self.scripts_write_status:
                    args += (self.keys.status(""), family.priority)
                self._evalsha(pipe, "replay", [family.dead_letters, family.stream], args)
            raw: list[Any] = await pipe.execute(raise_on_error=False) if sent else []
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in raw):
                await self.load_scripts()
                continue
            replies = iter(raw)
            return [
                _replay_reply(next(replies)) if stream == f.dead_letters else _MISMATCH
                for f, stream, _ in items
            ]
        raise AssertionError("unreachable")

    async def ack_deleted(self, delivery: Delivery) -> None:
        """A pending entry whose stream entry is gone: nothing to run, just acknowledge it."""
        await self.redis.xack(
            self.families[delivery.family_index].stream, self.group, delivery.entry_id
        )

    # -- delayed tasks --------------------------------------------------------------------

    async def promote_due(self, now_ms: int, limit: int = 500) -> int:
        """Move due delayed entries of every family to their streams; returns how many left
        the delayed sets. On a single Redis with statuses tracked, tasks cancelled while they
        waited are dropped instead, and a ``scheduled`` status becomes ``queued`` with its
        new entry's place (see ``promote_due.lua``)."""
        args: list[Any] = [now_ms, limit]
        if self.scripts_write_status:
            args += (self.keys.status(""), self.keys.cancelled(""))

        def build(pipe: Any) -> None:
            for family in self.families:
                self._evalsha(pipe, "promote_due", [family.delayed, family.stream], args)

        results = await self._run_pipeline(build)
        return sum(int(r) for r in results)

    # -- publishing -----------------------------------------------------------------------

    def publish_batch_command(
        self, family: StreamFamily, entries: bytes, status_prefix: str | None = None
    ) -> tuple[Any, ...]:
        """The XADD of a batch packed by :func:`wire.encode_entries`, as one EVAL command for a
        pipeline or :meth:`send_in_order` (the script's text, not its SHA: a command stream
        cannot be resent on NOSCRIPT). With ``status_prefix`` (single Redis only) the script
        also writes each task's first status, ``queued``, before its entry, with the
        family's priority."""
        script = self._source["publish_batch"]
        if status_prefix is None:
            return ("EVAL", script, 1, family.stream, entries)
        return ("EVAL", script, 1, family.stream, entries, status_prefix, family.priority)

    async def send_in_order(
        self, chunks: Iterable[Sequence[Sequence[Any]]], *, raise_errors: bool = True
    ) -> list[Any]:
        """Send each chunk of commands as soon as ``chunks`` yields it, all on one connection,
        and read the replies at the end: the caller builds chunk k+1 while Redis runs chunk
        k, and Redis runs the commands in the order given (a pipeline builds everything
        first, then waits). Raises the first error reply once every reply is read (or, with
        ``raise_errors=False``, returns it in its place).

        As a pipeline does, the whole stream is sent once more on a fresh connection after a
        connection error, so a command may run twice (at-least-once). Single Redis only, and
        only commands that need no NOSCRIPT retry (scripts go as EVAL)."""
        chunks = iter(chunks)
        sent: list[Sequence[Sequence[Any]]] = []
        source: Iterable[Sequence[Sequence[Any]]] = chunks
        for attempt in (1, 2):
            try:
                replies = await self._send_in_order(source, sent)
                break
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == 2:
                    raise
                source = [*sent, *chunks]  # what was built already, then the rest
                sent = []
        if raise_errors:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def _send_in_order(
        self, chunks: Iterable[Sequence[Sequence[Any]]], sent: list[Sequence[Sequence[Any]]]
    ) -> list[Any]:
        conn = await self._connection.take()
        done = False
        try:
            count = 0
            for chunk in chunks:
                sent.append(chunk)
                await conn.send_packed_command(conn.pack_commands(chunk))
                count += len(chunk)
            # Error replies come back as exceptions: the connection stays in step.
            replies = await read_replies(conn, count)
            done = True
            return replies
        finally:
            await self._connection.give_back(conn, ok=done)

    async def run_pipeline(self, build: Callable[[Any], None]) -> list[Any]:
        """Send a pipeline built by ``build`` (which may queue scripts), raising its first error."""
        return await self._run_pipeline(build)

    async def publish_once(
        self,
        family: StreamFamily,
        idempotency_key: str,
        task_id: str,
        ttl_seconds: int,
        due_ms: int,
        member: bytes,
        status_row: Sequence[str] = (),
    ) -> tuple[str, bool]:
        """Publish unless the key was used; the first status (when given) is written by the
        same script, so it can never land after the worker's own writes. On Redis Cluster, a
        task id whose status lives in another slot than ``family`` gets no ``status_row``
        here: the caller writes it after, with :meth:`StatusStore.write_first_if_absent`."""
        keys = [self.keys.idempotency(idempotency_key, family.partition), family.stream]
        keys.append(family.delayed)
        if status_row:
            keys.append(self.keys.status(task_id))
        reply = await self._eval(
            "publish_once",
            keys,
            [
                task_id,
                ttl_seconds,
                due_ms,
                member,
                _msgpack.encode(list(status_row)) if status_row else "",
            ],
        )
        existing, fresh = reply
        return (existing.decode() if isinstance(existing, bytes) else str(existing)), bool(fresh)


_MISMATCH: ReplayReply = ("partition_mismatch", "", "")


def _replay_reply(raw: Sequence[Any] | Exception) -> ReplayReply | Exception:
    if isinstance(raw, Exception):
        return raw
    texts = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
    texts += [""] * (3 - len(texts))
    return texts[0], texts[1], texts[2]
