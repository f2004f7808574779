"""JSON log lines with the seed's fields, and no patient data in any log line, span or metric."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from streamworker import PermanentError, Producer, Registry, Settings, TaskContext
from streamworker.embedded import free_port
from streamworker.keyspace import Keyspace
from streamworker.observability import build_observability
from streamworker.observability.audit import stream_events
from streamworker.observability.logging import JsonFormatter, LoggingHook
from tests.conftest import running_worker, wait_for
from tests.otlp_receiver import otlp_receiver

pytestmark = pytest.mark.anyio

SEED_FIELDS = {"timestamp", "level", "service", "event", "task_id", "task_type", "retry_count"}


class Lines(logging.Handler):
    """Keeps every formatted line, as the JSON formatter writes it."""

    def __init__(self, formatter: JsonFormatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def log_lines(settings: Settings) -> Iterator[Lines]:
    handler = Lines(JsonFormatter("background-tasks", settings.consumer))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_lines_are_json_with_the_seed_fields(
    settings: Settings, redis: aioredis.Redis, log_lines: Lines
) -> None:
    registry = Registry()
    attempts: dict[str, int] = {}

    @registry.handler("ok")
    async def ok(payload: dict[str, Any], ctx: TaskContext) -> None:
        ctx.logger.info("reminder_sent")

    @registry.handler("flaky")
    async def flaky(payload: dict[str, Any], ctx: TaskContext) -> None:
        attempts[ctx.task_id] = attempts.get(ctx.task_id, 0) + 1
        if ctx.attempt == 1:
            raise ConnectionError("gateway busy")

    @registry.handler("perm")
    async def perm(payload: dict[str, Any], ctx: TaskContext) -> None:
        raise PermanentError("not possible")

    settings = settings.with_overrides(audit_enabled=False)
    obs = build_observability(settings, task_types=registry)
    producer = Producer.from_settings(settings, redis=redis)
    async with running_worker(settings, registry, hooks=obs.task_hooks) as worker:
        ok_id = await producer.publish("ok", {}, correlation_id="corr-42", priority="high")
        flaky_id = await producer.publish("flaky", {})
        perm_id = await producer.publish("perm", {})
        await wait_for(lambda: worker.completed_runs == 4)

    docs = log_lines.docs()
    assert len(docs) == len(log_lines.lines)  # every line is one JSON object
    events = [d["event"] for d in docs]
    for name in (
        "worker_started",
        "task_started",
        "task_completed",
        "task_retrying",
        "task_dead_lettered",
        "worker_stopping",
    ):
        assert name in events, name
    for doc in docs:
        assert {"timestamp", "level", "service", "event", "consumer"} <= doc.keys()
        assert doc["service"] == "background-tasks"
        assert doc["consumer"] == settings.consumer
        assert doc["timestamp"].endswith("Z")

    def lines_of(task_id: str) -> dict[str, dict[str, Any]]:
        return {d["event"]: d for d in docs if d.get("task_id") == task_id}

    ok_lines = lines_of(ok_id)
    assert SEED_FIELDS | {"duration_ms"} <= ok_lines["task_completed"].keys()
    assert ok_lines["task_completed"]["task_type"] == "ok"
    assert ok_lines["task_completed"]["retry_count"] == 0
    assert ok_lines["task_completed"]["priority"] == "high"
    assert ok_lines["task_completed"]["correlation_id"] == "corr-42"
    assert ok_lines["task_completed"]["level"] == "info"
    # a handler's own line carries the task's fields too
    assert ok_lines["reminder_sent"].keys() >= SEED_FIELDS
    assert ok_lines["reminder_sent"]["correlation_id"] == "corr-42"

    flaky_lines = [d for d in docs if d.get("task_id") == flaky_id]
    retrying = next(d for d in flaky_lines if d["event"] == "task_retrying")
    assert retrying["retry_count"] == 1 and retrying["error_type"] == "ConnectionError"
    assert retrying["priority"] == "normal"
    completed = next(d for d in flaky_lines if d["event"] == "task_completed")
    assert completed["retry_count"] == 1

    dead = lines_of(perm_id)["task_dead_lettered"]
    assert dead["dlq_reason"] == "permanent_failure" and dead["level"] == "warning"
    assert dead.keys() >= SEED_FIELDS
    await producer.aclose()


async def test_patient_data_never_reaches_logs_spans_metrics_or_audit(
    settings: Settings, redis: aioredis.Redis, log_lines: Lines
) -> None:
    marker = "PHI-7f3a-Jane-Doe-1961"
    registry = Registry()
    runs: list[str] = []

    @registry.handler("leaky", max_retries=1)
    async def leaky(payload: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.task_id)
        raise RuntimeError(f"could not reach {payload['name']}")

    @registry.handler("refused")
    async def refused(payload: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.task_id)
        raise PermanentError(f"no record for {payload['name']}")

    with otlp_receiver() as (receiver, endpoint):
        settings = settings.with_overrides(
            otel_exporter_otlp_endpoint=endpoint, metrics_port=free_port()
        )
        obs = build_observability(settings, task_types=registry, redis=redis)
        producer = Producer.from_settings(settings, redis=redis, hooks=obs.producer_hooks)
        async with (
            obs.running(),
            running_worker(settings, registry, hooks=obs.task_hooks, metrics=obs.metrics) as worker,
        ):
            await producer.publish("leaky", {"name": marker})
            await producer.publish("refused", {"name": marker})
            # bad input carrying the marker: unknown type, and a payload that is no object
            stream = f"{settings.prefix}normal_priority_tasks"
            await redis.xadd(stream, {"task_type": "nope", "payload": f'{{"n":"{marker}"}}'})
            await redis.xadd(stream, {"task_type": "leaky", "payload": f'["{marker}"]'})
            await wait_for(lambda: len(runs) == 3 and worker.completed_runs == 5)
            async with httpx.AsyncClient() as client:
                metrics = (
                    await client.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
                ).text
        await wait_for(lambda: len(receiver.spans) >= 5)
        audit = await redis.xrange(Keyspace(settings.prefix).audit_events)

    assert "tasks_processed_total" in metrics and marker not in metrics
    assert len(log_lines.lines) > 10
    for line in log_lines.lines:
        assert marker not in line
    assert any(json.loads(line)["event"] == "task_dead_lettered" for line in log_lines.lines)
    # with tracing on, task lines carry the ids of the consumer span
    span_ids = {s.span_id for s in receiver.spans}
    started = [d for d in log_lines.docs() if d["event"] == "task_started"]
    assert started and all(d["span_id"] in span_ids and len(d["trace_id"]) == 32 for d in started)
    for body in receiver.raw:
        assert marker.encode() not in body
    for span in receiver.spans:
        assert marker not in repr(span)
    assert any(s.attributes.get("error.type") == "RuntimeError" for s in receiver.spans)
    assert len(stream_events(audit)) >= 8
    for _, fields in audit:
        assert marker.encode() not in b"".join(k + v for k, v in fields.items())
    await producer.aclose()


def test_hook_with_no_current_task_still_formats() -> None:
    formatter = JsonFormatter("svc")
    record = logging.makeLogRecord({"msg": "worker_started", "levelname": "INFO", "levelno": 20})
    doc = json.loads(formatter.format(record))
    assert doc["event"] == "worker_started" and doc["service"] == "svc"
    assert "task_id" not in doc and "trace_id" not in doc
    try:
        raise ValueError("secret PHI text")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "secret PHI text" not in line and json.loads(line)["error_type"] == "ValueError"
    assert LoggingHook("c").rejected is not None
