"""OpenTelemetry: the real OTLP/HTTP exporter against a local receiver that decodes the
protobuf. Producer and consumer spans share the trace and carry the messaging attributes."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from streamworker import Producer, Registry, Settings, TaskContext
from streamworker.observability import build_observability
from streamworker.settings import ConfigError
from tests.conftest import running_worker, wait_for
from tests.otlp_receiver import otlp_receiver

pytestmark = pytest.mark.anyio

PRODUCER, CONSUMER = 4, 5  # Span.SpanKind in the OTLP protobuf
STATUS_ERROR = 2


async def test_producer_and_consumer_spans_share_the_trace(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = Registry()
    ran: list[str] = []

    @registry.handler("ok")
    async def ok(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    @registry.handler("boom", max_retries=1)
    async def boom(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)
        raise ValueError("never works")

    with otlp_receiver() as (receiver, endpoint):
        settings = settings.with_overrides(
            otel_exporter_otlp_endpoint=endpoint,
            otel_service_name="bg-test",
            audit_enabled=False,
        )
        assert settings.otel_enabled
        obs = build_observability(settings, task_types=registry, redis=redis)
        producer = Producer.from_settings(settings, redis=redis, hooks=obs.producer_hooks)
        async with obs.running(), running_worker(settings, registry, hooks=obs.task_hooks):
            ok_id = await producer.publish("ok", {}, correlation_id="corr-1")
            boom_id = await producer.publish("boom", {}, priority="high")
            await wait_for(lambda: len(ran) == 3)
        # leaving obs.running() shut the provider down, which exported every span
        await wait_for(lambda: len([s for s in receiver.spans if s.kind == CONSUMER]) == 3)

    assert set(receiver.paths) == {"/v1/traces"}
    spans = receiver.spans
    send_ok = next(
        s for s in spans if s.kind == PRODUCER and s.attributes["messaging.message.id"] == ok_id
    )
    send_boom = next(
        s for s in spans if s.kind == PRODUCER and s.attributes["messaging.message.id"] == boom_id
    )
    normal = f"{settings.prefix}normal_priority_tasks"
    high = f"{settings.prefix}high_priority_tasks"
    assert send_ok.name == f"send {normal}"
    assert send_ok.attributes["messaging.system"] == "redis"
    assert send_ok.attributes["messaging.destination.name"] == normal
    assert send_ok.attributes["messaging.operation.type"] == "send"
    assert send_ok.resource["service.name"] == "bg-test"

    process_ok = next(
        s for s in spans if s.kind == CONSUMER and s.attributes["messaging.message.id"] == ok_id
    )
    assert process_ok.name == f"process {normal}"
    assert process_ok.trace_id == send_ok.trace_id
    assert process_ok.parent_span_id == send_ok.span_id
    assert process_ok.attributes["messaging.system"] == "redis"
    assert process_ok.attributes["messaging.destination.name"] == normal
    assert process_ok.attributes["messaging.consumer.group.name"] == settings.group
    assert process_ok.attributes["messaging.operation.type"] == "process"
    assert process_ok.attributes["messaging.message.conversation_id"] == "corr-1"
    assert process_ok.attributes["streamworker.task.type"] == "ok"
    assert process_ok.attributes["streamworker.task.attempt"] == 1
    assert process_ok.attributes["streamworker.task.outcome"] == "completed"
    assert "error.type" not in process_ok.attributes
    assert process_ok.status_code != STATUS_ERROR

    # both attempts of the failing task are children of its one producer span
    attempts = sorted(
        (
            s
            for s in spans
            if s.kind == CONSUMER and s.attributes["messaging.message.id"] == boom_id
        ),
        key=lambda s: s.attributes["streamworker.task.attempt"],
    )
    assert [s.attributes["streamworker.task.attempt"] for s in attempts] == [1, 2]
    assert [s.attributes["streamworker.task.outcome"] for s in attempts] == [
        "retrying",
        "dead_lettered",
    ]
    for span in attempts:
        assert span.name == f"process {high}"
        assert span.trace_id == send_boom.trace_id
        assert span.parent_span_id == send_boom.span_id
        assert span.attributes["error.type"] == "ValueError"
        assert span.status_code == STATUS_ERROR
        assert "never works" not in span.status_message
        assert span.events == []  # no recorded exception: its message may hold PHI
    assert attempts[1].attributes["streamworker.dead_letter.reason"] == "max_retries_exceeded"
    await producer.aclose()


def test_tracing_is_off_unless_configured(settings: Settings) -> None:
    assert not Settings().otel_enabled
    obs = build_observability(settings.with_overrides(audit_enabled=False))
    assert obs.tracer_provider is None and obs.producer_hooks == []
    assert [type(h).__name__ for h in obs.task_hooks] == ["LoggingHook"]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert Settings.from_env(env).otel_enabled
    assert not Settings.from_env({**env, "OTEL_SDK_DISABLED": "true"}).otel_enabled
    assert not Settings.from_env({**env, "OTEL_TRACES_EXPORTER": "none"}).otel_enabled
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "console"}).otel_enabled


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://x"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_SDK_DISABLED", "maybe"),
    ],
)
def test_bad_otel_values_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})


def test_cli_publish_sends_a_producer_span(settings: Settings) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, worker_env

    with otlp_receiver() as (receiver, endpoint):
        env = worker_env(
            settings,
            STREAMWORKER_HANDLERS="handlers",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="bg-cli",
        )
        done = subprocess.run(
            [sys.executable, "-m", "streamworker", "publish", "test_notification",
             "--payload", '{"message": "hello"}'],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip()
        [span] = [s for s in receiver.spans if s.kind == PRODUCER]
    assert span.attributes["messaging.message.id"] == task_id
    assert span.resource["service.name"] == "bg-cli"
