"""Audit events for every task (the seed's §Security): ``background_task_started`` and
``background_task_completed`` with task id, type, priority, success and the error *class*
(never its message: it may hold patient data).

The hook only appends small records to in-memory buffers (one per task run, holding both of
its events, when there is one sink); nothing on the hot path waits for Redis or the network.
Background sinks drain the buffers:

- :class:`StreamSink` appends batches to the bounded ``audit_events`` stream, one entry per
  up to 100 records holding them as a JSON array of rows (``events``, named by ``columns``),
  one call per batch (:func:`stream_events` turns entries back into documents);
- :class:`HttpForwarder` (when ``AUDIT_SERVICE_URL`` is set) POSTs batches as a JSON array
  to the Audit Service, retrying with capped exponential backoff while it is unreachable.

A sink sends every 0.2 s, or as soon as a batch's worth of records is buffered. Each buffer is
bounded (``AUDIT_BUFFER_SIZE`` records): when a sink falls that far behind, new events are
dropped for that sink — counted (``streamworker_audit_events_dropped_total``) and logged,
never silently, and never at the cost of holding up a task.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from importlib import resources
from itertools import islice
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import msgspec
import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from ..connection import KeptConnection
from ..hooks import Outcome, TaskEnd
from ..wire import Rejected, Task, format_millis

__all__ = [
    "AuditBuffer",
    "AuditCollector",
    "AuditHook",
    "HttpForwarder",
    "StreamSink",
    "stream_events",
]

log = logging.getLogger("streamworker.audit")

STARTED = "background_task_started"
COMPLETED = "background_task_completed"

#: A task's audit record, as a row of :data:`COLUMNS` -- a list, the cheapest thing to build
#: on the hot path and to encode. Three shapes: started only (the first five columns),
#: completed only (all ten, ``started_ms`` null: a rejected entry, or a run whose start was
#: already sent), and both events of one run (all ten): see :class:`AuditHook`.
Record = list[Any]

#: The stream's column names; times are milliseconds since the epoch.
COLUMNS = (
    "task_id",
    "task_type",
    "priority",
    "attempt",
    "started_ms",
    "completed_ms",
    "success",
    "outcome",
    "error_type",
    "duration_ms",
)
_COLUMNS_JSON = msgspec.json.encode(COLUMNS)
_STARTED_ONLY = 5  # a started-only record's length

_json = msgspec.json.Encoder()
_COMPLETED = Outcome.COMPLETED


class _StartedDocument(msgspec.Struct):
    # Field order is the JSON key order of the documents.
    event_type: str
    timestamp: str
    service: str
    consumer: str
    task_id: str
    task_type: str | None
    priority: str
    attempt: int


class _CompletedDocument(_StartedDocument):
    success: bool | None
    outcome: str | None
    error_type: str | None
    duration_ms: float | None


def count_events(records: Iterable[Sequence[Any]]) -> int:
    """How many events the records hold (a record of both of one run's events holds two).
    One call for a batch: it runs for every record a sink sends."""
    events = 0
    for record in records:
        events += 2 if len(record) > _STARTED_ONLY and record[4] is not None else 1
    return events


def record_documents(record: Sequence[Any], service: str, consumer: str) -> list[Any]:
    """The record's events as the Audit Service's JSON documents (Structs: they encode
    faster than the equivalent dicts)."""
    task_id, task_type, priority, attempt, started_ms = record[:_STARTED_ONLY]
    head = (service, consumer, task_id, task_type, priority, attempt)
    documents: list[Any] = []
    if started_ms is not None:
        documents.append(_StartedDocument(STARTED, format_millis(started_ms), *head))
    if len(record) > _STARTED_ONLY:
        completed_ms, *end = record[_STARTED_ONLY:]
        documents.append(_CompletedDocument(COMPLETED, format_millis(completed_ms), *head, *end))
    return documents


class AuditBuffer:
    """A bounded FIFO of records for one sink; counts the events it sent and had to drop."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.items: deque[Record] = deque()
        self.dropped = 0
        self.sent = 0
        self._reported_drops = 0
        #: A sink waiting in :meth:`wait` is woken once this many records are buffered.
        self.wake_at = capacity
        self._wake: anyio.Event | None = None
        # Positions since the start: of the next record put, of the oldest still held, and
        # of the first one no sink batch has taken yet (records before it are being sent, or
        # were, and must not change any more).
        self.appended = 0
        self._removed = 0
        self.untaken = 0

    def put(self, record: Record) -> bool:
        """Buffer ``record`` (at position :attr:`appended`); False when full (dropped)."""
        items = self.items
        if len(items) >= self.capacity:
            self.dropped += 1
            return False
        items.append(record)
        self.appended += 1
        if self._wake is not None and len(items) >= self.wake_at:
            self._wake.set()
            self._wake = None
        return True

    async def wait(self, seconds: float) -> bool:
        """Until ``wake_at`` records are buffered (True), or ``seconds`` have passed (False)."""
        if len(self.items) >= self.wake_at:
            await anyio.lowlevel.checkpoint()
            return True
        self._wake = wake = anyio.Event()
        with anyio.move_on_after(seconds):
            await wake.wait()
        self._wake = None
        return len(self.items) >= self.wake_at

    def take(self, n: int) -> list[Record]:
        """The oldest ``n`` records for a batch (still held until :meth:`done`); from now on
        they are not to change."""
        batch = list(islice(self.items, n))
        self.untaken = max(self.untaken, self._removed + len(batch))
        return batch

    def done(self, n: int, *, sent: bool = True) -> None:
        """Let go of the oldest ``n`` records, counting their events as sent or dropped."""
        popleft = self.items.popleft
        events = count_events([popleft() for _ in range(n)])
        self._removed += n
        if sent:
            self.sent += events
        else:
            self.dropped += events

    def report_drops(self) -> None:
        """One warning per flush round in which events were dropped (not one per event)."""
        if self.dropped != self._reported_drops:
            log.warning(
                "audit_events_dropped",
                extra={
                    "sink": self.name,
                    "dropped": self.dropped - self._reported_drops,
                    "dropped_total": self.dropped,
                },
            )
            self._reported_drops = self.dropped


class AuditHook:
    """Records the started and completed events of every task in each sink's buffer.

    With one sink (the usual case) a run's two events share one record: ``before`` buffers
    the started record, and ``after`` completes that same record in place unless the sink
    has taken it for a batch meanwhile (a long task), when the completion is a record of its
    own. Half the records, and each event's task fields written once: the stream sink's
    cost, and the bytes it sends, are mostly per record. With several sinks, whose batches
    are taken at different times, each event is a record of its own."""

    uses_enqueued_at = False  # the events carry the start and end, not the wait

    def __init__(self, buffers: Sequence[AuditBuffer]) -> None:
        self._puts = tuple(buffer.put for buffer in buffers)
        self._only = buffers[0] if len(buffers) == 1 else None

    def _emit(self, record: Record) -> None:
        for put in self._puts:
            put(record)

    def before(self, task: Task, started_at: float, enqueued_at: float) -> Any:
        record = [
            task.task_id,
            task.task_type,
            task.priority,
            task.retry_count + 1,
            int(started_at * 1000),  # truncated, as format_time does
        ]
        only = self._only
        if only is None:
            self._emit(record)
            return None
        position = only.appended
        return (record, position) if only.put(record) else None

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        duration = end.duration
        # Rounded to the microsecond by hand: round(x, 3) costs several times as much.
        duration_ms = int(duration * 1_000_000 + 0.5) / 1000
        outcome = end.outcome  # a StrEnum: encodes as its value, without the .value lookup
        error = end.error
        error_type = None if error is None else type(error).__name__
        if token is not None:
            record, position = token
            if position >= self._only.untaken:  # type: ignore[union-attr]  # a token: one sink
                # Completed at its start plus its run time: one clock read fewer.
                record += (
                    record[4] + int(duration * 1000),
                    outcome is _COMPLETED,
                    outcome,
                    error_type,
                    duration_ms,
                )
                return
        self._emit(
            [
                task.task_id,
                task.task_type,
                task.priority,
                task.retry_count + 1,
                None,
                int(time.time() * 1000),
                outcome is _COMPLETED,
                outcome,
                error_type,
                duration_ms,
            ]
        )

    def rejected(self, rejected: Rejected, priority: str) -> None:
        # Never started: one completed event saying why it was refused.
        self._emit(
            [
                rejected.task_id or "unknown",
                rejected.task_type,
                priority,
                0,
                None,
                int(time.time() * 1000),
                False,
                Outcome.DEAD_LETTERED.value,
                rejected.reason,
                None,
            ]
        )


class _Sink:
    """Drains one buffer in batches; retries a failed batch with capped backoff."""

    name = "sink"

    def __init__(
        self,
        buffer: AuditBuffer,
        *,
        service: str,
        consumer: str,
        batch_size: int,
        interval: float = 0.2,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
        drain_timeout: float = 3.0,
    ) -> None:
        self.buffer = buffer
        self._service = service
        self._consumer = consumer
        self._batch_size = batch_size
        self._interval = interval
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._drain_timeout = drain_timeout
        self.retries = 0
        # Under load a batch's worth arrives well within the interval: send it then, rather
        # than let the buffer fill up (at 30,000 tasks/s, 12,000 events come in 0.2 s).
        buffer.wake_at = max(1, min(batch_size, buffer.capacity // 2))

    async def _send(self, batch: list[Record]) -> bool:
        """Deliver a batch: True when done, False to drop it for good (not retryable).
        Raises for a transient failure."""
        raise NotImplementedError

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            while True:
                # Woken by a full batch, only full batches go: what comes in while one is on
                # its way waits for the next (sending whatever had come each time made
                # batches of a few dozen records under load, each a call of its own).
                full = await self.buffer.wait(self._interval)
                await self._drain(full_only=full)
        finally:
            # Stopping: one last, bounded attempt to deliver what is buffered.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._drain_timeout):
                await self._drain(retry=False)
            left = len(self.buffer.items)
            if left:
                self.buffer.done(left, sent=False)
            self.buffer.report_drops()

    async def _drain(self, *, retry: bool = True, full_only: bool = False) -> None:
        """Send what is buffered now, in batches (what comes in meanwhile waits for the next
        round); with ``full_only``, only while at least a batch's worth (``wake_at``) is."""
        delay = self._first_backoff
        failures = 0
        items = self.buffer.items
        left = len(items)
        while (len(items) >= self.buffer.wake_at) if full_only else left > 0:
            batch = self.buffer.take(self._batch_size if full_only else min(self._batch_size, left))
            try:
                delivered = await self._send(batch)
            except Exception as exc:
                failures += 1
                self.retries += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "audit_delivery_failed",
                        extra={
                            "sink": self.name,
                            "error_type": type(exc).__name__,
                            "attempts": failures,
                            "buffered": len(self.buffer.items),
                        },
                    )
                self.buffer.report_drops()
                if not retry:
                    return
                await anyio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(self._max_backoff, delay * 2)
                continue
            if failures:
                log.info("audit_delivery_resumed", extra={"sink": self.name, "attempts": failures})
                failures = 0
                delay = self._first_backoff
            self.buffer.done(len(batch), sent=delivered)
            left -= len(batch)
        self.buffer.report_drops()


class StreamSink(_Sink):
    """Appends batches to the bounded audit stream: one entry per up to :attr:`per_entry`
    records, whose ``events`` field is their JSON array (the records are the rows, see
    :data:`Record`; the entry's ``columns``, ``service`` and ``consumer`` hold the rest of
    each document, ``count`` how many events, ``total`` how many the stream had taken in
    all), written by one script call per batch. The cap (``AUDIT_STREAM_MAXLEN``) counts
    events, not entries; a small list beside the stream (``index``, by default the stream's
    name + ``:index``) keeps each entry's count and running total for the trimming. See
    ``audit_append.lua``."""

    name = "stream"
    #: Records per stream entry: about ten kilobytes, small enough to read a page at a time.
    per_entry = 100

    def __init__(
        self,
        buffer: AuditBuffer,
        redis: aioredis.Redis,
        stream: str,
        maxlen: int,
        *,
        index: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(buffer, batch_size=500, **kw)
        self._keys = [stream, index or f"{stream}:index"]
        self._maxlen = maxlen
        source = (resources.files("streamworker") / "scripts" / "audit_append.lua").read_text()
        self._append = redis.register_script(source)  # reloads itself after NOSCRIPT
        # Off a cluster, straight onto a kept connection: see KeptConnection.
        self._direct = None if isinstance(redis, RedisCluster) else KeptConnection(redis)

    async def _send(self, batch: list[Record]) -> bool:
        args: list[bytes | str | int] = [self._maxlen, self._service, self._consumer, _COLUMNS_JSON]
        step = self.per_entry
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            args.append(count_events(chunk))
            args.append(_json.encode(chunk))  # the records are the rows
        if self._direct is not None:
            reply = await self._direct.call("EVALSHA", self._append.sha, 2, *self._keys, *args)
            if not isinstance(reply, NoScriptError):
                if isinstance(reply, Exception):
                    raise reply
                return True
        await self._append(keys=self._keys, args=args)  # also loads the script (NOSCRIPT)
        return True

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            if self._direct is not None:
                with anyio.CancelScope(shield=True):
                    await self._direct.aclose()


def stream_events(entries: Iterable[tuple[Any, dict[bytes, bytes]]]) -> list[dict[str, Any]]:
    """The events of audit stream entries (as ``XRANGE`` returns them), oldest first, as the
    same documents the Audit Service gets (a record's two events one after the other).
    Entries of the two earlier formats are read too: one document per entry (field
    ``event``), and one row per event (``columns`` starting with ``event_type``)."""
    events: list[dict[str, Any]] = []
    for _, fields in entries:
        rows = fields.get(b"events")
        if rows is None:
            if b"event" in fields:
                events.append(msgspec.json.decode(fields[b"event"]))
            continue
        columns = msgspec.json.decode(fields[b"columns"])
        service, consumer = fields[b"service"].decode(), fields[b"consumer"].decode()
        if columns[0] == "event_type":
            origin = {"service": service, "consumer": consumer}
            for row in msgspec.json.decode(rows):
                document = dict(zip(columns, row, strict=False))
                document.update(origin)
                events.append(document)
            continue
        for record in msgspec.json.decode(rows):
            events.extend(
                msgspec.structs.asdict(document)
                for document in record_documents(record, service, consumer)
            )
    return events


class HttpForwarder(_Sink):
    """POST batches (a JSON array of events) to the Audit Service."""

    name = "http"

    def __init__(
        self,
        buffer: AuditBuffer,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(buffer, batch_size=200, **kw)
        self._url = url
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=headers)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with self._client:
            await super().run(task_status=task_status)

    async def _send(self, batch: list[Record]) -> bool:
        origin = (self._service, self._consumer)
        body = _json.encode([doc for record in batch for doc in record_documents(record, *origin)])
        response = await self._client.post(self._url, content=body)
        status = response.status_code
        if status < 300:
            return True
        if status in (408, 425, 429) or status >= 500:
            raise _Transient(f"HTTP {status}")
        # A refusal that will not change by retrying (bad request, auth): drop, loudly.
        events = count_events(batch)
        log.error("audit_batch_refused", extra={"status_code": status, "events": events})
        return False


class _Transient(Exception):
    pass


class AuditCollector(Collector):
    """Counters of the sinks, read at scrape time (no hot-path cost)."""

    def __init__(self, sinks: Sequence[_Sink]) -> None:
        self._sinks = tuple(sinks)

    def collect(self) -> Iterable[Metric]:
        sent = CounterMetricFamily(
            "streamworker_audit_events_sent", "Audit events delivered, by sink.", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            "streamworker_audit_events_dropped",
            "Audit events dropped (buffer full, refused, or left at shutdown), by sink.",
            labels=["sink"],
        )
        retries = CounterMetricFamily(
            "streamworker_audit_delivery_retries",
            "Failed audit deliveries that were retried, by sink.",
            labels=["sink"],
        )
        buffered = GaugeMetricFamily(
            "streamworker_audit_events_buffered", "Audit events waiting, by sink.", labels=["sink"]
        )
        for sink in self._sinks:
            sent.add_metric([sink.name], sink.buffer.sent)
            dropped.add_metric([sink.name], sink.buffer.dropped)
            retries.add_metric([sink.name], sink.retries)
            buffered.add_metric([sink.name], len(sink.buffer.items))
        return [sent, dropped, retries, buffered]
