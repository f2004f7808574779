"""Keep going through Redis outages: retry an operation with capped exponential backoff."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .outage import Outage

T = TypeVar("T")

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
    outage = Outage(what, first_delay=first_delay, max_delay=max_delay)
    while True:
        try:
            result = await operation()
        except TRANSIENT as exc:
            await outage.failed(exc)
            continue
        outage.ok()
        return result
