"""Logs, metrics, traces and audit: hooks into the task life cycle.

:func:`build_observability` turns the settings into the hooks a worker and a producer take,
the metrics registry the worker serves on ``METRICS_PORT``, and the background parts (audit
sinks, the trace exporter) that :meth:`Observability.running` starts and flushes on exit::

    obs = build_observability(settings, task_types=registry.names())
    worker = Worker(settings, hooks=obs.task_hooks, metrics=obs.metrics)
    async with obs.running():
        ...run the worker...

What is off installs nothing: no tracing hook without OTEL configuration, no metrics hook
without ``METRICS_PORT``, no audit hook with ``AUDIT_ENABLED=false``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Container
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from ..hooks import ProducerHook, TaskHook
from ..settings import Settings
from .logging import LoggingHook

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from .audit import _Sink

__all__ = ["Observability", "build_observability"]


class Observability:
    def __init__(
        self,
        *,
        task_hooks: list[TaskHook],
        producer_hooks: list[ProducerHook],
        metrics: CollectorRegistry | None,
        sinks: list[_Sink],
        tracer_provider: TracerProvider | None,
        own_redis: aioredis.Redis | None,
    ) -> None:
        self.task_hooks = task_hooks
        self.producer_hooks = producer_hooks
        self.metrics = metrics
        self.sinks = sinks
        self.tracer_provider = tracer_provider
        self._own_redis = own_redis

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Observability]:
        """Run the audit sinks; on exit flush them and the pending spans."""
        try:
            async with anyio.create_task_group() as tg:
                for sink in self.sinks:
                    await tg.start(sink.run)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()  # each sink makes one bounded last delivery
        finally:
            if self.tracer_provider is not None:
                provider = self.tracer_provider
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(provider.shutdown)
            if self._own_redis is not None:
                with anyio.CancelScope(shield=True):
                    await self._own_redis.aclose()


def build_observability(
    settings: Settings,
    *,
    task_types: Container[str] | None = None,
    redis: aioredis.Redis | None = None,
    metrics: bool | None = None,
    process_wide: bool = False,
) -> Observability:
    """Hooks for what the settings turn on.

    ``task_types``: the registered types, the only ones used as metric labels.
    ``redis``: the client for the audit stream (one is made from REDIS_URL if needed).
    ``metrics``: force the metrics hook on or off (default: on when METRICS_PORT is set).
    ``process_wide``: for the one worker of a CLI process: count into prometheus_client's
    default registry (with its process metrics, and what an API in the same process serves)
    and make the tracer provider the global one (so handlers' own spans use it).
    """
    task_hooks: list[Any] = []
    producer_hooks: list[Any] = []
    provider = None
    if settings.otel_enabled:
        from opentelemetry import trace

        from .tracing import ProducerTracingHook, TracingHook, build_tracer_provider, tracer_from

        provider = build_tracer_provider(settings)
        if process_wide:
            trace.set_tracer_provider(provider)
        tracer = tracer_from(provider)
        # First: the span is current for the other hooks' log lines, and ends last.
        task_hooks.append(
            TracingHook(tracer, settings.keyspace(), settings.group, settings.consumer)
        )
        producer_hooks.append(ProducerTracingHook(tracer))
    task_hooks.append(LoggingHook(settings.consumer))

    registry: CollectorRegistry | None = None
    if metrics if metrics is not None else settings.metrics_port is not None:
        from .metrics import MetricsHook

        if process_wide:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        else:
            registry = CollectorRegistry()
        task_hooks.append(MetricsHook(registry, task_types))

    sinks: list[Any] = []
    own_redis = None
    if settings.audit_enabled:
        from ..broker import connect_to
        from .audit import AuditBuffer, AuditCollector, AuditHook, HttpForwarder, StreamSink

        if redis is None:
            redis = own_redis = connect_to(settings)
        service, consumer = settings.otel_service_name, settings.consumer
        keys = settings.keyspace()
        sinks.append(
            StreamSink(
                AuditBuffer("stream", settings.audit_buffer_size),
                redis,
                keys.audit_events,
                settings.audit_stream_maxlen,
                index=keys.audit_index,
                service=service,
                consumer=consumer,
            )
        )
        if settings.audit_service_url:
            sinks.append(
                HttpForwarder(
                    AuditBuffer("http", settings.audit_buffer_size),
                    settings.audit_service_url,
                    token=settings.audit_service_token,
                    service=service,
                    consumer=consumer,
                )
            )
        task_hooks.append(AuditHook([sink.buffer for sink in sinks]))
        if registry is not None:
            registry.register(AuditCollector(sinks))

    return Observability(
        task_hooks=task_hooks,
        producer_hooks=producer_hooks,
        metrics=registry,
        sinks=sinks,
        tracer_provider=provider,
        own_redis=own_redis,
    )
