"""What the routes share for the life of the app: one Redis client and the service objects
over it. Built in the app's lifespan, kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from litestar.datastructures import State

from ..broker import Broker
from ..cancel import TaskCanceller
from ..deadletters import DeadLetters
from ..keyspace import Keyspace
from ..producer import Producer
from ..registry import Registry
from ..settings import Settings
from ..status import StatusStore
from .estimate import BacklogSampler

__all__ = ["ApiServices", "services"]


@dataclass(frozen=True, slots=True)
class ApiServices:
    settings: Settings
    keys: Keyspace
    redis: aioredis.Redis
    broker: Broker
    producer: Producer
    status: StatusStore
    canceller: TaskCanceller
    dead_letters: DeadLetters
    sampler: BacklogSampler
    registry: Registry | None = None  # task types and schedules (None: the default registry)


def services(state: State) -> ApiServices:
    found = state.get("services")
    if not isinstance(found, ApiServices):
        raise RuntimeError("the API's services are not set up (lifespan did not run)")
    return found
