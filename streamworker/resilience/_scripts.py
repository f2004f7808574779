"""Loads the resilience Lua scripts from ``streamworker/scripts``."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis


@cache
def _source(name: str) -> str:
    return (resources.files("streamworker") / "scripts" / f"{name}.lua").read_text()


def register(redis: aioredis.Redis, name: str) -> Any:
    """A redis-py Script: EVALSHA, falling back to EVAL after a restart (NOSCRIPT)."""
    return redis.register_script(_source(name))
