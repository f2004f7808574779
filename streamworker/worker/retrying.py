"""Keep going through Redis outages: retry an operation with capped exponential backoff."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")
log = logging.getLogger("streamworker.worker")

#: Errors that mean "Redis is not reachable right now", as opposed to a bug. READONLY is the
#: answer of a replica during a failover, until the address points at the new primary.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, ReadOnlyError)


async def until_done(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    first_delay: float = 0.05,
    max_delay: float = 5.0,
) -> T:
    """Run ``operation`` until it succeeds, waiting longer after each transient failure."""
    delay = first_delay
    failures = 0
    while True:
        try:
            result = await operation()
        except TRANSIENT as exc:
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning(
                    "redis_unavailable",
                    extra={
                        "operation": what,
                        "error_type": type(exc).__name__,
                        "attempts": failures,
                    },
                )
            await anyio.sleep(delay)
            delay = min(max_delay, delay * 2)
            continue
        if failures:
            log.info("redis_reconnected", extra={"operation": what, "attempts": failures})
        return result
