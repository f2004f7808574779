"""OpenTelemetry traces, following the messaging semantic conventions (CONTRACT.md §9).

- Producer: a PRODUCER span ``send <stream>`` per published task; its context is written into
  the entry as the W3C ``traceparent`` / ``tracestate`` fields.
- Worker: a CONSUMER span ``process <stream>`` per handler run, whose parent is the context
  found in the entry (so a retry's run is in the same trace as the first one), current while
  the handler runs (the handler's own spans and log lines join it).

Attributes never carry payloads or exception messages: ``error.type`` is the exception class.
Configured from the standard ``OTEL_*`` variables through :class:`~streamworker.Settings`;
when tracing is off no hook is installed, so it costs nothing on the hot path.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..hooks import Outcome, TaskEnd
from ..keyspace import Keyspace
from ..settings import Settings
from ..wire import Rejected, Task

__all__ = ["ProducerTracingHook", "TracingHook", "build_tracer_provider"]

_propagator = TraceContextTextMapPropagator()
_SYSTEM = "redis"  # not in the semconv list of well-known systems; the lower-case product name
_SCOPE = "streamworker"


def build_tracer_provider(settings: Settings) -> TracerProvider:
    """A provider exporting in batches (off the event loop, in the SDK's thread) to OTLP or
    the console, as the settings say. Other standard variables the SDK reads itself:
    OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _CERTIFICATE, OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    return provider


def _exporter(settings: Settings) -> SpanExporter:
    if settings.otel_traces_exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    if settings.otel_exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=settings.otel_exporter_otlp_traces_endpoint
            or settings.otel_exporter_otlp_endpoint
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    # As the OTLP spec says: the signal-specific endpoint is used as is, the general one gets
    # /v1/traces appended.
    endpoint = settings.otel_exporter_otlp_traces_endpoint
    if endpoint is None:
        base = settings.otel_exporter_otlp_endpoint or "http://localhost:4318"
        endpoint = base.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint)


def _fail(span: Span, error: BaseException) -> None:
    # The class only, and no record_exception(): its message and traceback may hold PHI.
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR))


class TracingHook:
    """The CONSUMER span of each handler run."""

    uses_enqueued_at = False  # the span starts when the run does

    def __init__(self, tracer: Tracer, keys: Keyspace, group: str, consumer: str) -> None:
        self._tracer = tracer
        # With partitions, the priority's name without the hash tag (the span is per task).
        self._streams = {
            f.priority: f.stream
            if not keys.partitioned
            else f"{keys.prefix}{f.priority}_priority_tasks"
            for f in keys.families
        }
        self._group = group
        self._consumer = consumer

    def before(self, task: Task, started_at: float, enqueued_at: float) -> tuple[Span, object]:
        parent = None
        if task.traceparent:
            carrier = {"traceparent": task.traceparent}
            if task.tracestate:
                carrier["tracestate"] = task.tracestate
            parent = _propagator.extract(carrier)
        stream = self._streams.get(task.priority, task.priority)
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": stream,
            "messaging.message.id": task.task_id,
            "messaging.consumer.group.name": self._group,
            "messaging.client.id": self._consumer,
            "streamworker.task.type": task.task_type,
            "streamworker.task.priority": task.priority,
            "streamworker.task.attempt": task.retry_count + 1,
        }
        if task.correlation_id:
            attributes["messaging.message.conversation_id"] = task.correlation_id
        span = self._tracer.start_span(
            f"process {stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            start_time=int(started_at * 1e9),
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        span, context_token = token
        try:
            span.set_attribute("streamworker.task.outcome", end.outcome.value)
            if end.dead_letter_reason:
                span.set_attribute("streamworker.dead_letter.reason", end.dead_letter_reason)
            if end.error is not None and end.outcome is not Outcome.DEFERRED:
                _fail(span, end.error)
        finally:
            otel_context.detach(context_token)
            span.end()

    def rejected(self, rejected: Rejected, priority: str) -> None:
        pass  # no handler ran; the dead letter is counted and logged elsewhere


class ProducerTracingHook:
    """The PRODUCER span of each publish; its context goes into the entry's fields."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def before_publish(self, task_type: str, stream: str, fields: MutableMapping[str, Any]) -> Span:
        span = self._tracer.start_span(
            f"send {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": stream,
                "streamworker.task.type": task_type,
            },
        )
        _propagator.inject(fields, context=trace.set_span_in_context(span))
        return span

    def after_publish(self, token: Any, task_id: str, error: BaseException | None) -> None:
        span: Span = token
        span.set_attribute("messaging.message.id", task_id)
        if error is not None:
            _fail(span, error)
        span.end()


def tracer_from(provider: TracerProvider) -> Tracer:
    return provider.get_tracer(_SCOPE)
