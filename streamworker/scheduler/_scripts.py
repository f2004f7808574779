"""The scheduler's Lua scripts (``streamworker/scripts/scheduler_*.lua``), registered on a
client. redis-py's Script objects reload a script by themselves after a Redis restart."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis.asyncio as aioredis


def load_script(redis: aioredis.Redis, name: str) -> Any:
    source = (resources.files("streamworker") / "scripts" / f"{name}.lua").read_text()
    return redis.register_script(source)
