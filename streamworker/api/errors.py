"""Every error answer is JSON with a human-readable ``detail`` (CONTRACT.md §7).

400 bad request (the field is named), 401, 404, 409, 413, 415; 503 with ``Retry-After`` when
Redis cannot be reached or cannot take writes; 500 only for real faults, logged with the
exception's class only (messages may carry request data).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import InvalidTask
from .models import ErrorBody

__all__ = ["RETRY_AFTER_SECONDS", "error_response", "exception_handlers"]

log = logging.getLogger(__name__)

#: What a client is told to wait before retrying while Redis is unavailable.
RETRY_AFTER_SECONDS = 5

# Redis answers these while it cannot take writes for a while (loading, out of memory,
# a replica, a failover in progress): the request may succeed later, so 503 and not 500.
# redis-py raises its own classes for most of them (without the code in the message).
_UNAVAILABLE_TYPES = (
    RedisConnectionError,  # includes BusyLoadingError
    RedisTimeoutError,
    OutOfMemoryError,
    ReadOnlyError,
    MasterDownError,
    TryAgainError,
)
_UNAVAILABLE_PREFIXES = ("LOADING", "OOM", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN")


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(
        ErrorBody(status_code=status_code, detail=detail),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def redis_unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.warning("redis_unavailable", extra={"error_type": type(exc).__name__})
    return error_response(
        503,
        "the task store (Redis) is unavailable; retry later",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    problems: list[str] = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, dict):
                # Litestar calls the whole body "data".
                key = "body" if item.get("key") == "data" else item.get("key")
                message = str(item.get("message", "invalid"))
                problems.append(f"{key}: {message}" if key else message)
    detail = "; ".join(problems) if problems else exc.detail
    return error_response(400, f"invalid request: {detail}")


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    return error_response(exc.status_code, exc.detail, exc.headers)


def _invalid_task(_: Request[Any, Any, Any], exc: InvalidTask) -> Response[ErrorBody]:
    return error_response(400, f"invalid task: {exc}")


def _redis_error(request: Request[Any, Any, Any], exc: RedisError) -> Response[ErrorBody]:
    if isinstance(exc, _UNAVAILABLE_TYPES) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)
    ):
        return redis_unavailable(request, exc)
    return _internal(request, exc)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.error(
        "api_internal_error",
        extra={"error_type": type(exc).__name__, "path": request.scope.get("path", "")},
    )
    return error_response(500, "internal server error")


def exception_handlers(max_body_bytes: int) -> ExceptionHandlersMap:
    def too_large(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
        return error_response(
            413, f"the body is over the {max_body_bytes} byte limit (MAX_PAYLOAD_BYTES)"
        )

    return {
        413: too_large,
        ValidationException: _validation,
        HTTPException: _http,
        InvalidTask: _invalid_task,
        RedisError: _redis_error,
        Exception: _internal,
    }
