"""Helpers shared by the commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..settings import ConfigError, Settings
from . import fail


@contextmanager
def redis_errors(settings: Settings) -> Iterator[None]:
    """Turn Redis and configuration failures into one clear line and exit status 1 (2)."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc), 2)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        fail(f"cannot reach Redis at {_safe(settings.redis_url)}: {type(exc).__name__}")
    except RedisError as exc:
        fail(f"Redis error: {exc}")


def _safe(url: str | None) -> str:
    """The URL without its password."""
    if not url:
        return "(REDIS_URL unset)"
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
