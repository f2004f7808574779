"""Audit events: written to the bounded audit stream, forwarded to the Audit Service over real
HTTP with retries, and never holding up task processing."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamworker import PermanentError, Producer, Registry, Settings, TaskContext, TaskSpec
from streamworker.hooks import Outcome, TaskEnd
from streamworker.keyspace import Keyspace
from streamworker.observability import build_observability
from streamworker.observability.audit import (
    COLUMNS,
    AuditBuffer,
    AuditCollector,
    AuditHook,
    HttpForwarder,
    StreamSink,
    record_documents,
    stream_events,
)
from streamworker.settings import ConfigError
from streamworker.wire import Task
from tests.conftest import running_worker, wait_for

pytestmark = pytest.mark.anyio


class AuditService:
    """A local HTTP server standing in for the Audit Service: answers ``status`` while
    ``status`` is not 200, and records the events it accepted."""

    def __init__(self) -> None:
        self.status = 503
        self.accepted: list[dict[str, Any]] = []
        self.refused_requests = 0
        self.authorization: set[str | None] = set()
        self.lock = threading.Lock()


@contextmanager
def audit_service() -> Iterator[tuple[AuditService, str]]:
    service = AuditService()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with service.lock:
                service.authorization.add(self.headers.get("authorization"))
                status = service.status
                if status == 200:
                    service.accepted.extend(json.loads(body))
                else:
                    service.refused_requests += 1
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service, f"http://127.0.0.1:{server.server_address[1]}/api/v1/audit/events"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def noop_registry() -> Registry:
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
        return None

    @registry.handler("refuse")
    async def refuse(payload: dict[str, Any], ctx: TaskContext) -> None:
        raise PermanentError("refused for a reason that may name a patient")

    return registry


async def test_started_and_completed_events_go_to_the_audit_stream(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = noop_registry()
    obs = build_observability(settings, task_types=registry, redis=redis)
    producer = Producer.from_settings(settings, redis=redis)
    async with (
        obs.running(),
        running_worker(settings, registry, hooks=obs.task_hooks) as worker,
    ):
        ids = await producer.publish_many(
            [TaskSpec(task_type="noop", payload={}) for _ in range(20)]
            + [TaskSpec(task_type="refuse", payload={}, priority="high")]
        )
        await wait_for(lambda: worker.completed_runs == 21)
    # leaving obs.running() flushed the buffer
    entries = await redis.xrange(Keyspace(settings.prefix).audit_events)
    assert {tuple(fields) for _, fields in entries} == {
        (b"total", b"count", b"service", b"consumer", b"columns", b"events")
    }
    # rows named by the entry's columns: a run's started and completed events share a row
    for _, fields in entries:
        assert json.loads(fields[b"columns"]) == list(COLUMNS)
        assert fields[b"service"] == b"background-tasks"
    rows = [row for _, fields in entries for row in json.loads(fields[b"events"])]
    assert {len(row) for row in rows} <= {5, 10}
    assert sum(int(fields[b"count"]) for _, fields in entries) == 42
    events = stream_events(entries)
    assert len(events) == 42
    started = {e["task_id"] for e in events if e["event_type"] == "background_task_started"}
    completed = {e["task_id"]: e for e in events if e["event_type"] == "background_task_completed"}
    assert started == set(ids) == set(completed)
    ok = completed[ids[0]]
    assert ok["success"] is True and ok["task_type"] == "noop" and ok["priority"] == "normal"
    assert ok["error_type"] is None and ok["duration_ms"] >= 0 and ok["attempt"] == 1
    assert ok["timestamp"].endswith("Z") and ok["service"] == "background-tasks"
    failed = completed[ids[-1]]
    assert failed["success"] is False and failed["outcome"] == "dead_lettered"
    assert failed["error_type"] == "PermanentError" and failed["priority"] == "high"
    assert all("patient" not in json.dumps(e) for e in events)  # the class, never the message
    assert {e["consumer"] for e in events} == {settings.consumer}
    await producer.aclose()


def started(task_id: str) -> list[Any]:
    return [task_id, "noop", "normal", 1, 0]


def noop_task(task_id: str) -> Task:
    return Task(task_id=task_id, task_type="noop", payload=b"{}", priority="normal")


def test_a_run_is_one_record_unless_its_start_was_taken_meanwhile() -> None:
    buffer = AuditBuffer("stream", 100)
    hook = AuditHook([buffer])
    token = hook.before(noop_task("quick"), 1.5, 1.0)
    hook.after(noop_task("quick"), token, TaskEnd(Outcome.COMPLETED, 0.25))
    # a long task: its start goes out in a batch before it ends
    token = hook.before(noop_task("long"), 2.0, 1.0)
    assert len(buffer.take(10)) == 2
    hook.after(noop_task("long"), token, TaskEnd(Outcome.RETRYING, 9.0, ValueError()))
    records = list(buffer.items)
    assert [len(r) for r in records] == [10, 5, 10]
    assert records[0][:5] == ["quick", "noop", "normal", 1, 1500]
    assert records[1] == ["long", "noop", "normal", 1, 2000]
    assert records[2][4] is None and records[2][7:] == ["retrying", "ValueError", 9000.0]
    buffer.done(3)
    assert buffer.sent == 4  # events, not records
    documents = [msgspec.structs.asdict(d) for r in records for d in record_documents(r, "s", "c")]
    assert [(d["event_type"], d["task_id"]) for d in documents] == [
        ("background_task_started", "quick"),
        ("background_task_completed", "quick"),
        ("background_task_started", "long"),
        ("background_task_completed", "long"),
    ]
    assert documents[0]["timestamp"] == "1970-01-01T00:00:01.500Z"
    assert documents[1]["success"] is True and documents[1]["duration_ms"] == 250.0


def test_with_two_sinks_each_event_is_a_record() -> None:
    # Two sinks take their batches at different times: a shared record must not change.
    buffers = [AuditBuffer("stream", 100), AuditBuffer("http", 100)]
    hook = AuditHook(buffers)
    token = hook.before(noop_task("t"), 1.0, 1.0)
    hook.after(noop_task("t"), token, TaskEnd(Outcome.COMPLETED, 0.1))
    for buffer in buffers:
        assert [len(r) for r in buffer.items] == [5, 10]
        assert buffer.items[1][4] is None


def stream_sink(
    settings: Settings, redis: aioredis.Redis, cap: int, **kw: Any
) -> tuple[str, StreamSink]:
    """The audit stream's name, and a sink for it with a buffer of 10,000 records."""
    stream = Keyspace(settings.prefix).audit_events
    return stream, StreamSink(
        AuditBuffer("stream", 10_000), redis, stream, cap, service="s", consumer="c", **kw
    )


async def drain_sink(sink: StreamSink, events: int) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        await wait_for(lambda: sink.buffer.sent == events)
        tg.cancel_scope.cancel()


async def test_audit_stream_is_bounded_in_events(settings: Settings, redis: aioredis.Redis) -> None:
    stream = Keyspace(settings.prefix).audit_events
    buffer = AuditBuffer("stream", 10_000)
    sink = StreamSink(buffer, redis, stream, 200, service="s", consumer="c")
    for i in range(3000):
        buffer.put(started(f"t{i}"))
    await drain_sink(sink, 3000)
    entries = await redis.xrange(stream)
    events = stream_events(entries)
    # the newest events, at least the cap and less than one entry more
    assert 200 <= len(events) < 200 + StreamSink.per_entry
    assert [e["task_id"] for e in events] == [f"t{i}" for i in range(3000 - len(events), 3000)]
    # each entry says how many events it holds and how many the stream had taken in all
    totals = [int(fields[b"total"]) for _, fields in entries]
    counts = [int(fields[b"count"]) for _, fields in entries]
    assert totals[-1] == 3000 and sum(counts) == len(events)
    assert all(b - a == n for a, b, n in zip(totals, totals[1:], counts[1:], strict=False))


async def test_under_load_the_sink_sends_full_batches(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Under load records come faster than a timer would drain them: a batch's worth wakes the
    # sink (it would otherwise sleep the whole interval, here far longer than the test), and
    # records that come while a batch is on its way wait for the next full one (sending
    # whatever had come each time made batches of a few dozen records, a call each).
    stream, sink = stream_sink(settings, redis, 100_000, interval=600)
    buffer = sink.buffer
    sizes: list[int] = []
    send = sink._send

    async def counting(batch: list[Any]) -> bool:
        sizes.append(len(batch))
        return await send(batch)

    sink._send = counting  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for i in range(3000):
            buffer.put(started(f"t{i}"))
            if i % 30 == 29:
                await anyio.sleep(0)
        await wait_for(lambda: buffer.sent == 3000)
        tg.cancel_scope.cancel()
    assert sizes == [500] * 6 and buffer.dropped == 0
    assert len(stream_events(await redis.xrange(stream))) == 3000


async def test_sinks_sharing_the_audit_stream_keep_one_count(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Several workers append to one stream: the cap holds for all of them together, and a
    # batch smaller than an entry is an entry of its own.
    stream = Keyspace(settings.prefix).audit_events
    sinks = [
        StreamSink(AuditBuffer("stream", 1000), redis, stream, 150, service="s", consumer=c)
        for c in ("a", "b")
    ]
    for round_ in range(4):
        for sink in sinks:
            for i in range(70):
                sink.buffer.put(started(f"{sink._consumer}{round_}-{i}"))
            await sink._drain()
    entries = await redis.xrange(stream)
    assert int(entries[-1][1][b"total"]) == 560
    events = stream_events(entries)
    assert 150 <= len(events) < 150 + 70
    assert events[-1]["task_id"] == "b3-69" and events[-1]["consumer"] == "b"


async def test_entries_of_the_older_format_are_read_and_go_once_the_cap_is_reached(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Before events were batched, each entry held one event in its `event` field (and there
    # was no index). They stay until the new entries alone hold the cap, then all go at once.
    stream = Keyspace(settings.prefix).audit_events
    for i in range(500):
        await redis.xadd(stream, {"event": json.dumps({"task_id": f"old{i}"})})
    sink = StreamSink(AuditBuffer("stream", 1000), redis, stream, 200, service="s", consumer="c")
    for i in range(150):
        sink.buffer.put(started(f"new{i}"))
    await drain_sink(sink, 150)
    events = stream_events(await redis.xrange(stream))
    assert len(events) == 650 and events[0]["task_id"] == "old0"
    assert events[-1]["task_id"] == "new149"
    for i in range(150, 250):
        sink.buffer.put(started(f"new{i}"))
    await drain_sink(sink, 250)
    events = stream_events(await redis.xrange(stream))
    assert 200 <= len(events) < 300 and events[-1]["task_id"] == "new249"
    assert not any(e["task_id"].startswith("old") for e in events)


async def test_the_stream_sink_survives_lost_scripts_and_a_dropped_connection(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # The sink keeps its connection between calls and calls the script by its SHA: after a
    # SCRIPT FLUSH it loads it again, after its connection is dropped it retries on a new one.
    stream, sink = stream_sink(settings, redis, 10_000, first_backoff=0.01)
    buffer = sink.buffer
    for i in range(10):
        buffer.put(started(f"a{i}"))
    await sink._drain()
    await redis.script_flush()
    for i in range(10):
        buffer.put(started(f"b{i}"))
    await sink._drain()
    assert sink.retries == 0
    await redis.client_kill_filter(_type="normal", skipme=True)  # the sink's kept connection
    for i in range(10):
        buffer.put(started(f"c{i}"))
    await sink._drain()
    events = stream_events(await redis.xrange(stream))
    assert [e["task_id"] for e in events] == [f"{x}{i}" for x in "abc" for i in range(10)]
    assert buffer.sent == 30 and buffer.dropped == 0 and sink.retries == 1


async def test_a_foreign_item_in_the_index_does_not_stop_the_audit_stream(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = Keyspace(settings.prefix).audit_events
    await redis.rpush(f"{stream}:index", "not an index item")  # the oldest
    sink = StreamSink(AuditBuffer("stream", 1000), redis, stream, 100, service="s", consumer="c")
    for i in range(150):
        sink.buffer.put(started(f"t{i}"))
    await drain_sink(sink, 150)
    assert sink.retries == 0
    events = stream_events(await redis.xrange(stream))
    assert len(events) == 150 and events[-1]["task_id"] == "t149"  # cap + under an entry
    assert b"not an index item" not in await redis.lrange(f"{stream}:index", 0, -1)


async def test_each_event_comes_back_with_its_exact_document(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Text with newlines, quotes and non-ASCII characters comes back unchanged.
    stream = Keyspace(settings.prefix).audit_events
    buffer = AuditBuffer("stream", 100)
    sink = StreamSink(buffer, redis, stream, 1000, service="s", consumer="c")
    odd = ["line\nbreak", 'quote " and \\', "Zürich ✓", "tab\tand\r"]
    for i, task_type in enumerate(odd):
        buffer.put([f"t{i}", task_type, "high", 2, None, 0, False, "retrying", "ValueError", 1.5])
    buffer.put(["both", "noop", "normal", 1, 1_764_000_000_123, 1_764_000_000_456, True,
                "completed", None, 0.3])  # fmt: skip
    await drain_sink(sink, len(odd) + 2)
    documents = stream_events(await redis.xrange(stream))
    assert [d["task_type"] for d in documents[:-2]] == odd
    run = {"service": "s", "consumer": "c", "task_id": "both", "task_type": "noop"}
    run |= {"priority": "normal", "attempt": 1}
    assert documents[-2:] == [
        {"event_type": "background_task_started", "timestamp": "2025-11-24T16:00:00.123Z", **run},
        {
            "event_type": "background_task_completed",
            "timestamp": "2025-11-24T16:00:00.456Z",
            **run,
            "success": True,
            "outcome": "completed",
            "error_type": None,
            "duration_ms": 0.3,
        },
    ]
    assert documents[0] == {
        "event_type": "background_task_completed",
        "timestamp": "1970-01-01T00:00:00.000Z",
        "service": "s",
        "consumer": "c",
        "task_id": "t0",
        "task_type": "line\nbreak",
        "priority": "high",
        "attempt": 2,
        "success": False,
        "outcome": "retrying",
        "error_type": "ValueError",
        "duration_ms": 1.5,
    }


async def test_forwarder_retries_and_never_holds_up_processing(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    registry = noop_registry()
    tasks = 200
    with audit_service() as (service, url):
        buffer = AuditBuffer("http", 150)  # room for 150 records: at least 50 tasks' are dropped
        forwarder = HttpForwarder(
            buffer,
            url,
            token="audit-token",
            service="s",
            consumer="c",
            first_backoff=0.05,
            max_backoff=0.2,
        )
        producer = Producer.from_settings(settings, redis=redis)
        caplog.set_level(logging.INFO, logger="streamworker.audit")
        async with anyio.create_task_group() as tg:
            await tg.start(forwarder.run)
            async with running_worker(settings, registry, hooks=[AuditHook([buffer])]) as worker:
                await producer.publish_many(
                    [TaskSpec(task_type="noop", payload={}) for _ in range(tasks)]
                )
                # every task finishes while the Audit Service refuses everything
                await wait_for(lambda: worker.completed_runs == tasks)
                assert service.accepted == []
                await wait_for(lambda: service.refused_requests >= 3)
                service.status = 200
                await wait_for(lambda: len(buffer.items) == 0)
            tg.cancel_scope.cancel()
    # every event is either delivered or counted as dropped, never silently lost
    assert len(service.accepted) == buffer.sent and buffer.dropped >= 50
    assert buffer.sent + buffer.dropped == 2 * tasks
    keys = [(e["event_type"], e["task_id"]) for e in service.accepted]
    assert len(set(keys)) == len(keys)  # a retried batch is delivered once
    assert service.authorization == {"Bearer audit-token"}
    assert forwarder.retries >= 3
    messages = [r.getMessage() for r in caplog.records]
    assert "audit_events_dropped" in messages and "audit_delivery_failed" in messages
    assert "audit_delivery_resumed" in messages
    registry_ = CollectorRegistry()
    registry_.register(AuditCollector([forwarder]))
    samples = {
        (s.name, s.labels.get("sink")): s.value
        for f in text_string_to_metric_families(generate_latest(registry_).decode())
        for s in f.samples
    }
    assert samples[("streamworker_audit_events_dropped_total", "http")] == buffer.dropped
    assert samples[("streamworker_audit_events_sent_total", "http")] == buffer.sent
    await producer.aclose()


async def test_a_refused_batch_is_dropped_loudly_not_retried(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with audit_service() as (service, url):
        service.status = 400
        buffer = AuditBuffer("http", 100)
        forwarder = HttpForwarder(buffer, url, service="s", consumer="c")
        for i in range(10):
            buffer.put(started(f"t{i}"))
        async with anyio.create_task_group() as tg:
            await tg.start(forwarder.run)
            await wait_for(lambda: buffer.dropped == 10)
            tg.cancel_scope.cancel()
    assert service.refused_requests == 1 and forwarder.retries == 0
    assert "audit_batch_refused" in [r.getMessage() for r in caplog.records]


async def test_unreachable_audit_service_loses_no_task(
    settings: Settings, redis: aioredis.Redis
) -> None:
    from streamworker.embedded import free_port

    registry = noop_registry()
    settings = settings.with_overrides(audit_service_url=f"http://127.0.0.1:{free_port()}/events")
    obs = build_observability(settings, task_types=registry, redis=redis)
    producer = Producer.from_settings(settings, redis=redis)
    async with (
        obs.running(),
        running_worker(settings, registry, hooks=obs.task_hooks) as worker,
    ):
        await producer.publish_many([TaskSpec(task_type="noop", payload={}) for _ in range(30)])
        await wait_for(lambda: worker.completed_runs == 30)
    http_sink = next(s for s in obs.sinks if s.name == "http")
    assert http_sink.retries >= 1 and http_sink.buffer.sent == 0
    assert http_sink.buffer.dropped == 60  # what was left at shutdown is counted as dropped
    entries = await redis.xrange(Keyspace(settings.prefix).audit_events)
    assert len(stream_events(entries)) == 60
    await producer.aclose()


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("AUDIT_SERVICE_URL", "audit-logging:8084"),
        ("AUDIT_ENABLED", "sometimes"),
        ("AUDIT_BUFFER_SIZE", "10"),
        ("AUDIT_STREAM_MAXLEN", "-1"),
    ],
)
def test_bad_audit_settings_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})
