"""The Litestar application: ``create_app(settings)`` (CONTRACT.md §7).

``/api/v1/...`` needs a bearer token; ``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI
document (``/schema/openapi.json``, Swagger UI at ``/schema/swagger``) do not.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import redis.asyncio as aioredis
from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import ControllerRouterHandler
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .. import __version__
from ..broker import Broker, connect_to
from ..cancel import TaskCanceller
from ..deadletters import DeadLetters
from ..hooks import ProducerHook
from ..producer import Producer
from ..registry import Registry, default_registry
from ..settings import ConfigError, Settings
from ..status import StatusStore
from .auth import BEARER_SCHEME, TokenGuard
from .errors import exception_handlers
from .estimate import BacklogSampler
from .routes.deadletters import list_dead_letters, replay_dead_letters
from .routes.health import healthz, metrics, readyz
from .routes.schedules import list_schedules, pause_schedule, resume_schedule, run_schedule
from .routes.tasks import cancel_task, queue_stats, submit_task, task_status
from .services import ApiServices

__all__ = ["create_app"]

log = logging.getLogger(__name__)

API_ROUTES: tuple[ControllerRouterHandler, ...] = (
    submit_task,
    task_status,
    cancel_task,
    queue_stats,
    list_dead_letters,
    replay_dead_letters,
    list_schedules,
    run_schedule,
    pause_schedule,
    resume_schedule,
)


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    redis: aioredis.Redis | None = None,
    allow_no_auth: bool = False,
    extra_api_routes: Sequence[ControllerRouterHandler] = (),
    producer_hooks: Sequence[ProducerHook] = (),
    sample_interval: float = 1.0,
) -> Litestar:
    """The API over ``settings``' Redis (or the given client, which the caller then closes).

    Task types and their contracts come from ``registry`` (the default registry, filled by
    importing ``STREAMWORKER_HANDLERS``, unless given). Without ``API_TOKENS`` the app is
    refused unless ``allow_no_auth`` is true. ``producer_hooks`` see every submit (the
    tracing hook makes its PRODUCER span).
    """
    if not settings.api_tokens and not allow_no_auth:
        raise ConfigError(
            "API_TOKENS", "is empty: set at least one token (or start with --insecure-no-auth)"
        )
    guard = TokenGuard(settings.api_tokens)
    registry = registry if registry is not None else default_registry

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = redis or connect_to(
            settings,
            socket_connect_timeout=2,
            socket_timeout=5,
            # One immediate reconnect covers pooled connections a Redis restart broke; beyond
            # that the request fails fast with 503 instead of waiting on backoff.
            retry=Retry(NoBackoff(), 1),
        )
        keys = settings.keyspace()
        status = StatusStore(keys, settings.completed_ttl_seconds, enabled=settings.track_status)
        producer = Producer(
            client,
            keys=keys,
            contracts=registry.contracts,
            require_known_type=True,
            max_payload_bytes=settings.max_payload_bytes,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            status=status,
            hooks=producer_hooks,
        )
        svc = ApiServices(
            settings=settings,
            keys=keys,
            redis=client,
            broker=Broker(client, keys, settings.group, status=status),
            producer=producer,
            status=status,
            canceller=TaskCanceller(
                client, keys, settings.completed_ttl_seconds, group=settings.group
            ),
            dead_letters=DeadLetters(client, keys, settings.group, status=status),
            sampler=BacklogSampler(client, keys, settings.group, interval=sample_interval),
            registry=registry,
        )
        app.state.services = svc
        try:
            await svc.broker.ensure_groups()
        except (RedisError, OSError) as exc:
            # Not fatal: /readyz answers 503 until Redis is back and creates them then.
            log.warning("api_group_setup_failed", extra={"error_type": type(exc).__name__})
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(svc.sampler.run)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if redis is None:
                await client.aclose()

    api = Router(
        path="/api/v1",
        route_handlers=[*API_ROUTES, *extra_api_routes],
        guards=[guard],
        security=[{BEARER_SCHEME: []}] if guard.enabled else None,
    )
    # Request counts and latencies per route template (never per task id), into the default
    # registry that /metrics serves.
    http_metrics = PrometheusConfig(
        app_name="streamworker-api",
        prefix="streamworker_api",
        group_path=True,
        exclude_unhandled_paths=True,
        exclude=["/metrics"],
    )
    return Litestar(
        route_handlers=[api, healthz, readyz, metrics],
        middleware=[http_metrics.middleware],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(settings.max_payload_bytes),
        request_max_body_size=settings.max_payload_bytes,
        openapi_config=OpenAPIConfig(
            title="streamworker",
            version=__version__,
            description="Background Tasks Service: submit tasks and follow them.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(
                security_schemes={
                    BEARER_SCHEME: SecurityScheme(
                        type="http", scheme="bearer", description="A token from API_TOKENS"
                    )
                }
            ),
        ),
        logging_config=None,
        debug=False,
    )
