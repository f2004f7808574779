"""Publishing tasks: ``publish`` and a pipelined ``publish_many``, plus a sync wrapper.

The entry written is wire format v1 (CONTRACT.md §2). When the task type's contract is known
the payload is checked against it first, so a bad task is refused here, with the field named,
instead of reaching a stream.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from itertools import chain
from types import TracebackType
from typing import Any

import anyio.from_thread
import msgspec
import redis.asyncio as aioredis

from .broker import Broker, CommandList, connect_to
from .coalesce import Coalescer
from .errors import InvalidTask
from .hooks import ProducerHook
from .keyspace import PRIORITIES, Keyspace, StreamFamily, priority_rank
from .settings import Settings
from .status import StatusStore
from .wire import encode_entries, format_time, new_task_ids, pack_fields, parse_time

__all__ = ["Producer", "SyncProducer", "TaskSpec"]

_encoder = msgspec.json.Encoder()


class TaskSpec(msgspec.Struct, kw_only=True):
    """One task to publish; the keyword arguments of :meth:`Producer.publish` as a value."""

    task_type: str
    payload: Any
    priority: str = "normal"
    delay: float | None = None
    scheduled_for: datetime | str | None = None
    max_retries: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    correlation_id: str | None = None
    task_id: str | None = None
    #: Tasks with the same key go to the same partition (README "Scaling out"), so they are
    #: read in publish order. Not written to the entry: it may name a patient.
    partition_key: str | None = None


#: publish_many sends a batch bigger than this in chunks of this many tasks, each as soon as it
#: is built (Broker.send_in_order): Redis runs one while the next is being built.
_CHUNK = 200


class _Prepared:
    __slots__ = (
        "colocated", "due_ms", "family", "fields", "scheduled_for", "spec", "state", "task_id",
    )  # fmt: skip

    def __init__(
        self,
        spec: TaskSpec,
        task_id: str,
        family: StreamFamily,
        fields: dict[str, str | bytes],
        due_ms: int,
        state: str,
        scheduled_for: str | None,
    ) -> None:
        self.spec = spec
        self.task_id = task_id
        self.family = family
        self.fields = fields
        self.due_ms = due_ms
        self.state = state
        self.scheduled_for = scheduled_for
        #: The status hash is in the stream's slot (always, off a cluster).
        self.colocated = True

    def first_status(self) -> tuple[str, list[str]]:
        """The status hash written with the publish, as the flat list ``write_new`` takes."""
        f = self.fields
        row = [
            "status", self.state,
            "task_id", self.task_id,
            "task_type", self.spec.task_type,
            "priority", self.spec.priority,
            "created_at", f["created_at"],
            "retry_count", "0",
        ]  # fmt: skip
        if self.scheduled_for is not None:
            row += ("scheduled_for", self.scheduled_for)
        return self.task_id, row  # type: ignore[return-value]


class Producer:
    """Writes tasks to their priority stream (or the delayed set when they are not due yet)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        keys: Keyspace | None = None,
        contracts: Mapping[str, type[msgspec.Struct] | None] | None = None,
        require_known_type: bool = False,
        max_payload_bytes: int = 1048576,
        idempotency_ttl_seconds: int = 86400,
        status: StatusStore | None = None,
        hooks: Sequence[ProducerHook] = (),
    ) -> None:
        self.redis = redis
        self.keys = keys or Keyspace()
        self._contracts = dict(contracts or {})
        self._decoders = {
            name: msgspec.json.Decoder(c) for name, c in self._contracts.items() if c is not None
        }
        self._require_known_type = require_known_type
        self._max_payload_bytes = max_payload_bytes
        self._idempotency_ttl = idempotency_ttl_seconds
        self.status = status or StatusStore(self.keys, 172800)
        self._broker = Broker(redis, self.keys, "-", status=self.status)
        self._hooks = tuple(hooks)
        self._families = {
            p: [self.keys.family(p, k) for k in range(self.keys.partitions)] for p in PRIORITIES
        }
        # Tasks without a partition or idempotency key take the partitions in turn, starting
        # at a random one so that many producers do not all begin with the same partition.
        self._turn = random.randrange(self.keys.partitions)
        self._checked_types: set[str] = set()
        self._coalescer: Coalescer[_Prepared, str] = Coalescer(self._write)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis: aioredis.Redis | None = None,
        contracts: Mapping[str, type[msgspec.Struct] | None] | None = None,
        require_known_type: bool = False,
        hooks: Sequence[ProducerHook] = (),
    ) -> Producer:
        keys = settings.keyspace()
        return cls(
            redis or connect_to(settings),
            keys=keys,
            contracts=contracts,
            require_known_type=require_known_type,
            max_payload_bytes=settings.max_payload_bytes,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            status=StatusStore(keys, settings.completed_ttl_seconds, enabled=settings.track_status),
            hooks=hooks,
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- public API -----------------------------------------------------------------------

    async def publish(
        self,
        task_type: str,
        payload: Any,
        *,
        priority: str = "normal",
        delay: float | None = None,
        scheduled_for: datetime | str | None = None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        task_id: str | None = None,
        partition_key: str | None = None,
    ) -> str:
        """Publish one task; return its id (the first task's id for a repeated idempotency key).

        Concurrent calls share round trips: one made while another call's write is on its
        way waits for it, then goes out with the others that waited (``coalesce.py``)."""
        spec = TaskSpec(
            task_type=task_type,
            payload=payload,
            priority=priority,
            delay=delay,
            scheduled_for=scheduled_for,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            task_id=task_id,
            partition_key=partition_key,
        )
        now = time.time()
        prepared = self._prepare(spec, now, format_time(now), new_task_ids(1)[0])
        return (await self._hooked([prepared], self._write_one))[0]

    async def publish_many(self, specs: Iterable[TaskSpec]) -> list[str]:
        """Publish a batch in one pipelined round trip; returns the task ids in order.

        Every task is checked before anything is written: one bad task refuses the batch.
        """
        items = specs if isinstance(specs, Sequence) else list(specs)
        now = time.time()
        created_at = format_time(now)  # one clock reading for the batch: cheaper, same order
        ids = new_task_ids(len(items))
        prepared = [self._prepare(spec, now, created_at, ids[i]) for i, spec in enumerate(items)]
        return await self._hooked(prepared, self._write)

    # -- internals ------------------------------------------------------------------------

    async def _hooked(
        self, prepared: list[_Prepared], write: Callable[[list[_Prepared]], Awaitable[list[str]]]
    ) -> list[str]:
        """``write(prepared)`` between the producer hooks' ``before_publish`` and
        ``after_publish``."""
        if not self._hooks:
            return await write(prepared)
        tokens = [self._before_publish(p) for p in prepared]
        try:
            result = await write(prepared)
        except BaseException as exc:
            self._after_publish(tokens, prepared, exc)
            raise
        self._after_publish(tokens, prepared, None)
        return result

    async def _write_one(self, prepared: list[_Prepared]) -> list[str]:
        # Concurrent publishes share round trips: group commit (coalesce.py).
        return [await self._coalescer.submit(prepared[0])]

    def validate_payload(self, task_type: str, payload: Any) -> bytes:
        """The payload as JSON bytes, checked against the contract of ``task_type`` if known."""
        if self._require_known_type and task_type not in self._contracts:
            raise InvalidTask(f"unknown task type {task_type!r}")
        if isinstance(payload, bytes | str):
            raw = payload.encode() if isinstance(payload, str) else payload
        else:
            try:
                raw = _encoder.encode(payload)
            except (TypeError, msgspec.EncodeError) as exc:
                raise InvalidTask(f"payload is not JSON-serialisable: {exc}") from None
        if len(raw) > self._max_payload_bytes:
            raise InvalidTask(
                f"payload is {len(raw)} bytes, over the {self._max_payload_bytes} byte limit"
            )
        decoder = self._decoders.get(task_type)
        if decoder is None and isinstance(payload, dict):
            return raw  # a dict always encodes to a JSON object: no need to parse it back
        try:
            if decoder is not None:
                decoder.decode(raw)
            elif not isinstance(msgspec.json.decode(raw), dict):
                raise InvalidTask("payload must be a JSON object")
        except msgspec.ValidationError as exc:
            raise InvalidTask(f"payload does not match the {task_type} contract: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            # msgspec before 0.23 raised UnicodeDecodeError for invalid UTF-8 inside a
            # string, later versions a DecodeError: say which it was either way.
            try:
                raw.decode()
            except UnicodeDecodeError:
                raise InvalidTask("payload is not valid UTF-8") from None
            raise InvalidTask("payload is not valid JSON") from None
        return raw

    def _prepare(self, spec: TaskSpec, now: float, created_at: str, new_id: str) -> _Prepared:
        task_type = spec.task_type
        if task_type not in self._checked_types:
            if not task_type or any(c.isspace() for c in task_type):
                raise InvalidTask("task_type must be a non-empty name without spaces")
            self._checked_types.add(task_type)
        partitions = self._families.get(spec.priority)
        if partitions is None:
            try:
                priority_rank(spec.priority)
            except ValueError as exc:
                raise InvalidTask(str(exc)) from None
            raise InvalidTask(f"unknown priority {spec.priority!r}")  # pragma: no cover
        partition = self._partition(spec)
        family = partitions[partition]
        task_id = spec.task_id or new_id
        if self.keys.cluster and spec.task_id is None:
            # An id whose keys carry this partition's tag: the status lives with the stream.
            while self.keys.status_partition(task_id) != partition:
                task_id = new_task_ids(1)[0]
        payload = self.validate_payload(task_type, spec.payload)
        try:
            # The batch script hands entries to Redis as MessagePack *str* values (its cmsgpack
            # reads no bin type), and the contract wants UTF-8 JSON anyway.
            payload_text = payload.decode()
        except UnicodeDecodeError:
            raise InvalidTask("payload is not valid UTF-8") from None
        if spec.max_retries is not None and (
            not isinstance(spec.max_retries, int) or spec.max_retries < 0
        ):
            raise InvalidTask("max_retries must be an integer >= 0")
        if spec.timeout_seconds is not None and not spec.timeout_seconds > 0:
            raise InvalidTask("timeout_seconds must be a number > 0")
        due = self._due(spec, now)
        # publish_batch.lua reads the first status's fields by position: keep this order.
        # No priority (the stream says it) and no retry_count (absent is 0): two optional
        # fields (CONTRACT.md §2) every read would pass through Redis's Lua and the decoder.
        fields: dict[str, str | bytes] = {
            "task_id": task_id,
            "task_type": task_type,
            "payload": payload_text,
            "created_at": created_at,
        }
        scheduled = format_time(due) if due is not None else None
        if scheduled is not None:
            fields["scheduled_for"] = scheduled
        if spec.max_retries is not None:
            fields["max_retries"] = str(spec.max_retries)
        if spec.timeout_seconds is not None:
            fields["timeout_seconds"] = repr(float(spec.timeout_seconds))
        if spec.idempotency_key:
            fields["idempotency_key"] = spec.idempotency_key
        if spec.correlation_id:
            fields["correlation_id"] = spec.correlation_id
        parked = due is not None and due > now
        prepared = _Prepared(
            spec,
            task_id,
            family,
            fields,
            int(due * 1000) if parked and due else 0,
            "scheduled" if parked else "queued",
            scheduled,
        )
        if self.keys.cluster:
            prepared.colocated = self.keys.status_partition(task_id) == partition
        return prepared

    def _partition(self, spec: TaskSpec) -> int:
        count = self.keys.partitions
        if count == 1:
            return 0
        if spec.partition_key is not None:
            if not spec.partition_key:
                raise InvalidTask("partition_key must not be empty")
            return self.keys.partition_for(spec.partition_key)
        if spec.idempotency_key:
            # The idempotency key lives in the partition: the same key must find it again.
            return self.keys.partition_for(spec.idempotency_key)
        if spec.task_id:
            return self.keys.status_partition(spec.task_id)  # where its status lives
        self._turn = (self._turn + 1) % count
        return self._turn

    @staticmethod
    def _due(spec: TaskSpec, now: float) -> float | None:
        if spec.delay is not None and spec.scheduled_for is not None:
            raise InvalidTask("give either delay or scheduled_for, not both")
        if spec.delay is not None:
            if not spec.delay >= 0:
                raise InvalidTask("delay must be a number of seconds >= 0")
            return now + spec.delay if spec.delay > 0 else None
        if spec.scheduled_for is None:
            return None
        if isinstance(spec.scheduled_for, datetime):
            if spec.scheduled_for.tzinfo is None:
                raise InvalidTask("scheduled_for has no time zone")
            return spec.scheduled_for.timestamp()
        try:
            return parse_time(spec.scheduled_for)
        except ValueError as exc:
            raise InvalidTask(f"scheduled_for {exc}") from None

    async def _write(self, prepared: list[_Prepared]) -> list[str]:
        ids = [p.task_id for p in prepared]
        if not self.keys.cluster and not any(p.spec.idempotency_key for p in prepared):
            await self._broker.send_in_order(self._chunks(prepared))
            return ids
        plain = [p for p in prepared if not p.spec.idempotency_key]
        # The first statuses are queued before the entries, so a worker can never find a task
        # whose first status is still to come: in one pipeline where a status is in its
        # stream's slot (one connection, in order), else first, in a round trip of their own
        # (a cluster pipeline has no order across nodes).
        apart = [p.first_status() for p in plain if not p.colocated]
        if apart and self.status.enabled:
            await self._broker.run_pipeline(lambda pipe: self.status.write_new(pipe, apart))
        if plain:
            commands = self._commands(plain, [p for p in plain if p.colocated])

            def build(pipe: Any) -> None:
                for command in commands:
                    pipe.execute_command(*command)

            await self._broker.run_pipeline(build)
        for i, p in enumerate(prepared):
            if not p.spec.idempotency_key:
                continue
            task_id, fresh = await self._broker.publish_once(
                p.family,
                p.spec.idempotency_key,
                p.task_id,
                self._idempotency_ttl,
                p.due_ms,
                pack_fields(p.fields),
                p.first_status()[1] if self.status.enabled and p.colocated else (),
            )
            ids[i] = task_id
            if fresh and self.status.enabled and not p.colocated:
                await self._write_first_status(task_id, p.first_status()[1])
        return ids

    def _chunks(self, plain: list[_Prepared]) -> Iterator[CommandList]:
        """A big batch's commands, built a chunk at a time as ``send_in_order`` sends them.
        Chunks go in order on one connection, so every status still comes before its entry,
        and entries keep the batch's order. The first statuses of the immediate tasks are
        written by the publish script itself, from the entries' fields."""
        for start in range(0, len(plain), _CHUNK):
            part = plain[start : start + _CHUNK]
            yield self._commands(part, [p for p in part if p.due_ms], inline_status=True)

    def _commands(
        self, part: list[_Prepared], statuses: list[_Prepared], *, inline_status: bool = False
    ) -> CommandList:
        """The writes of ``part``: the first statuses of ``statuses`` (those that ride with
        the entries), then the immediate tasks as one script call per priority (one reply
        for the whole batch instead of one per task) and the parked ones into their delayed
        sets. With ``inline_status`` (single Redis), the script writes the immediate tasks'
        first statuses too."""
        commands = CommandList()
        self.status.write_new(
            commands,
            [p.first_status() for p in statuses],
            [p.spec.task_id is None for p in statuses],
        )
        batches: dict[StreamFamily, list[list[str | bytes]]] = {}
        for p in part:
            if p.due_ms:
                commands.append(("ZADD", p.family.delayed, p.due_ms, pack_fields(p.fields)))
            else:
                fields = list(chain.from_iterable(p.fields.items()))
                batches.setdefault(p.family, []).append(fields)
        prefix = self.keys.status("") if inline_status and self.status.enabled else None
        for family, entries in batches.items():
            commands.append(
                self._broker.publish_batch_command(family, encode_entries(entries), prefix)
            )
        return commands

    async def _write_first_status(self, task_id: str, row: list[str]) -> None:
        def build(pipe: Any) -> None:
            self.status.write_first_if_absent(pipe, task_id, row)

        await self._broker.run_pipeline(build)

    def _before_publish(self, p: _Prepared) -> list[Any]:
        return [
            hook.before_publish(p.spec.task_type, p.family.stream, p.fields) for hook in self._hooks
        ]

    def _after_publish(
        self, tokens: list[list[Any]], prepared: list[_Prepared], error: BaseException | None
    ) -> None:
        for per_task, p in zip(tokens, prepared, strict=True):
            for hook, token in zip(self._hooks, per_task, strict=True):
                hook.after_publish(token, p.task_id, error)


class SyncProducer(AbstractContextManager["SyncProducer"]):
    """Blocking wrapper for scripts: ``with SyncProducer(settings) as p: p.publish(...)``."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self._settings = settings
        self._options = options
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._producer: Producer = self._portal.call(self._make)

    async def _make(self) -> Producer:
        return Producer.from_settings(self._settings, **self._options)

    def publish(self, task_type: str, payload: Any, **options: Any) -> str:
        async def call() -> str:
            return await self._producer.publish(task_type, payload, **options)

        return self._portal.call(call)

    def publish_many(self, specs: Iterable[TaskSpec]) -> list[str]:
        items = list(specs)

        async def call() -> list[str]:
            return await self._producer.publish_many(items)

        return self._portal.call(call)

    def close(self) -> None:
        self._portal.call(self._producer.aclose)
        self._portal_cm.__exit__(None, None, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
