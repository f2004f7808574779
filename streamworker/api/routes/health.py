"""Probes and metrics, outside ``/api/`` and without a token: ``/healthz`` (the process
answers), ``/readyz`` (Redis answers and the consumer group exists), ``/metrics``."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.exceptions import ServiceUnavailableException
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.exceptions import RedisError

from ..errors import RETRY_AFTER_SECONDS
from ..models import ErrorBody, HealthResponse
from ..services import services

__all__ = ["healthz", "metrics", "readyz"]


@get("/healthz", summary="The process is alive", tags=["probes"])
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@get(
    "/readyz",
    summary="Redis is reachable and the consumer group exists",
    tags=["probes"],
    responses={503: ResponseSpec(ErrorBody, description="Redis unavailable or group missing")},
)
async def readyz(state: State) -> HealthResponse:
    svc = services(state)
    try:
        await svc.redis.ping()
        missing = await _streams_without_group(state)
        if missing:
            # Created by every worker at start, and by the API at start; a Redis that lost its
            # data (restart without persistence) gets them back here.
            await svc.broker.ensure_groups()
            missing = await _streams_without_group(state)
    except (RedisError, OSError) as exc:
        raise _unready(f"Redis is unavailable ({type(exc).__name__})") from None
    if missing:
        raise _unready(f"consumer group {svc.settings.group!r} missing on {', '.join(missing)}")
    return HealthResponse(status="ready")


async def _streams_without_group(state: State) -> list[str]:
    svc = services(state)
    pipe = svc.redis.pipeline(transaction=False)
    for family in svc.keys.families:
        pipe.xinfo_groups(family.stream)
    results = await pipe.execute(raise_on_error=False)
    missing: list[str] = []
    for family, groups in zip(svc.keys.families, results, strict=True):
        if isinstance(groups, BaseException) and not _is_missing_key(groups):
            raise groups
        if svc.settings.group not in _group_names(groups):
            missing.append(family.stream)
    return missing


def _group_names(groups: object) -> set[str]:
    names: set[str] = set()
    for group in groups if isinstance(groups, list) else []:
        name = group.get(b"name", group.get("name"))
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


def _is_missing_key(exc: BaseException) -> bool:
    return "no such key" in str(exc).lower()


def _unready(detail: str) -> ServiceUnavailableException:
    return ServiceUnavailableException(detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@get("/metrics", include_in_schema=False, media_type=CONTENT_TYPE_LATEST)
async def metrics() -> Response[bytes]:
    # The process's default registry: the worker's metrics when they share a process (dev),
    # the client library's process metrics otherwise.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
