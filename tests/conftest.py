"""Test harness: one private redis-server per test session (never the machine's 6379), a
fresh key prefix per test, and helpers to run a worker in-process or as a subprocess.

A test that cannot get its server fails loudly: the fixture raises, nothing is skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from streamworker import Registry, Settings, TaskContext, Worker
from streamworker.broker import connect
from streamworker.embedded import EmbeddedCluster, EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()  # raises RedisServerError: the test fails, never skips
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of 3 masters on loopback, shared by the session's cluster tests (each
    test has its own prefix); started on first use."""
    cluster = EmbeddedCluster(masters=3).start()  # raises: the test fails, never skips
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def settings(redis_server: EmbeddedRedis, prefix: str) -> Settings:
    """Fast timings so tests finish quickly; each test has its own prefix and consumer."""
    return Settings(
        redis_url=redis_server.url,
        prefix=prefix,
        consumer=f"c-{uuid.uuid4().hex[:6]}",
        worker_count=8,
        retry_base_seconds=0.05,
        retry_max_seconds=1.0,
        promote_interval_seconds=0.02,
        read_block_ms=100,
        shutdown_grace_seconds=5,
        task_timeout_seconds=5,
    )


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def recording_registry(ran: list[str], task_type: str = "noop") -> Registry:
    """A registry whose one handler records the id of every task it runs in ``ran``."""
    registry = Registry()

    @registry.handler(task_type)
    async def record(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    return registry


@asynccontextmanager
async def running_worker(
    settings: Settings, registry: Registry, **kwargs: Any
) -> AsyncIterator[Worker]:
    """A worker running in this event loop; stopped gracefully on exit."""
    worker = Worker(settings, registry=registry, **kwargs)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.02) -> None:
    """Poll an async or sync predicate until it is true; fail with a clear message if not."""
    with anyio.fail_after(timeout):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await anyio.sleep(interval)


# -- what tests poll for (with wait_for) and look at ------------------------------------


async def status_is(redis: aioredis.Redis, settings: Settings, task_id: str, state: str) -> bool:
    """The task's status hash says ``state``."""
    current = await redis.hget(settings.keyspace().status(task_id), "status")
    return current is not None and current.decode() == state


async def dead_letters(redis: aioredis.Redis, settings: Settings) -> list[dict[str, str]]:
    """The dead-letter entries, oldest first, as text."""
    entries = await redis.xrange(settings.keyspace().dead_letters)
    return [{k.decode(): v.decode(errors="replace") for k, v in f.items()} for _, f in entries]


async def pending_is(redis: aioredis.Redis, stream: str, group: str, n: int) -> bool:
    return int((await redis.xpending(stream, group))["pending"]) == n


async def xlen_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a ``streamworker`` subprocess using the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMWORKER_", "REDIS_"))}
    env.update(
        {
            "REDIS_URL": settings.redis_url or "",
            "STREAMWORKER_PREFIX": settings.prefix,
            "STREAMWORKER_HANDLERS": "tests.sample_handlers",
            "RETRY_BASE_SECONDS": str(settings.retry_base_seconds),
            "RETRY_MAX_SECONDS": str(settings.retry_max_seconds),
            "PROMOTE_INTERVAL_SECONDS": str(settings.promote_interval_seconds),
            "READ_BLOCK_MS": str(settings.read_block_ms),
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "warning",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A ``streamworker worker`` subprocess; its stderr goes to a temporary file."""

    def __init__(self, settings: Settings, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamworker", "worker", *args],
            env=worker_env(settings, **env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def close(self) -> None:
        self.kill()
        self.log.close()


@pytest.fixture
def worker_processes() -> Iterator[list[WorkerProcess]]:
    """Collects the worker subprocesses a test starts and makes sure none outlives it."""
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.close()


def start_worker_process(
    settings: Settings, *args: str, registry: list[WorkerProcess] | None = None, **env: str
) -> WorkerProcess:
    process = WorkerProcess(settings, args, env)
    if registry is not None:
        registry.append(process)
    return process


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, AOF on with ``appendfsync always``, that the test may
    ``kill()`` (SIGKILL) and ``start()`` again on the same port and data directory."""
    server = EmbeddedRedis(appendonly=True, appendfsync="always").start()
    try:
        yield server
    finally:
        server.close()
