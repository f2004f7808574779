"""The worker's own small HTTP endpoint on ``METRICS_PORT``: ``/metrics`` and ``/healthz``.

It runs in the worker's task group, on the worker's event loop: a scrape refreshes the queue
gauges from Redis with the worker's client, and an answer at all proves the loop is not
stuck. HTTP parsing is h11's (sans-IO); uvicorn is not used here because it installs its own
SIGTERM/SIGINT handlers, which belong to the worker's graceful stop.

``/healthz`` is 200 while the worker runs and Redis answered a PING within the last
``3 * ping_interval`` seconds, else 503 (``/readyz`` is the same check). The body is a small
JSON document saying which.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import anyio
import anyio.abc
import h11
import msgspec
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ..keyspace import Keyspace
from ..settings import ConfigError, Settings
from .metrics import QueueCollector, WorkerStateCollector

__all__ = ["MetricsServer"]

log = logging.getLogger("streamworker.metrics")

_MAX_REQUEST = 16 * 1024
_encoder = msgspec.json.Encoder()


class ServedWorker(Protocol):
    settings: Settings
    redis: aioredis.Redis
    keys: Keyspace

    @property
    def in_flight(self) -> int: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def stopping(self) -> bool: ...


class MetricsServer:
    def __init__(
        self,
        worker: ServedWorker,
        registry: CollectorRegistry | None = None,
        *,
        host: str = "0.0.0.0",
        ping_interval: float = 5.0,
    ) -> None:
        self._worker = worker
        self.registry = registry if registry is not None else CollectorRegistry()
        self._host = host
        self._ping_interval = ping_interval
        self._queues = QueueCollector(worker.redis, worker.keys, worker.settings.group)
        self._state = WorkerStateCollector(worker, worker.settings.visibility_timeout_seconds)
        self._redis_ok_at = time.monotonic()  # the worker just talked to Redis to start
        self.port: int | None = None
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    async def bind(self) -> MetricsServer:
        """Open the listening socket; a port that cannot be used is a configuration error,
        raised before the worker starts anything else."""
        port = self._worker.settings.metrics_port
        if port is None:
            raise ConfigError("METRICS_PORT", "is not set")
        try:
            self._listener = await anyio.create_tcp_listener(local_host=self._host, local_port=port)
        except OSError as exc:
            raise ConfigError(
                "METRICS_PORT", f"{port} cannot be listened on: {exc.strerror}"
            ) from None
        self.port = port
        return self

    async def aclose(self) -> None:
        """Release a port bound by :meth:`bind` without serving (the worker never started)."""
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._listener is None:
            await self.bind()
        listener = self._listener
        assert listener is not None
        self.registry.register(self._queues)
        self.registry.register(self._state)
        try:
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(self._ping_loop)
                log.info("metrics_listening", extra={"port": self.port})
                task_status.started()
                await listener.serve(self._handle, task_group=tg)
        finally:
            self._listener = None
            self.registry.unregister(self._queues)
            self.registry.unregister(self._state)

    # -- health -----------------------------------------------------------------------------

    async def _ping_loop(self) -> None:
        while True:
            try:
                with anyio.fail_after(self._ping_interval):
                    await self._worker.redis.ping()
                self._redis_ok_at = time.monotonic()
            except Exception as exc:  # any failure just means "not answered"
                log.warning("health_ping_failed", extra={"error_type": type(exc).__name__})
            await anyio.sleep(self._ping_interval)

    def health(self) -> tuple[bool, dict[str, Any]]:
        since = time.monotonic() - self._redis_ok_at
        redis_ok = since <= 3 * self._ping_interval
        stopping = self._worker.stopping
        status = "stopping" if stopping else ("ok" if redis_ok else "redis_unreachable")
        return status == "ok", {
            "status": status,
            "redis_answered_seconds_ago": round(since, 3),
            "in_flight": self._worker.in_flight,
            "consumer": self._worker.settings.consumer,
        }

    # -- HTTP -------------------------------------------------------------------------------

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
            request: h11.Request | None = None
            try:
                with anyio.fail_after(10):
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await stream.receive(65536))
                        elif isinstance(event, h11.Request):
                            request = event
                        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                            break
            except (h11.RemoteProtocolError, anyio.EndOfStream, anyio.BrokenResourceError):
                await self._send(stream, conn, 400, "text/plain", b"bad request\n")
                return
            except TimeoutError:
                return
            if request is None:
                return
            status, content_type, body = await self._route(request)
            if request.method == b"HEAD":
                body = b""
            await self._send(stream, conn, status, content_type, body)

    async def _route(self, request: h11.Request) -> tuple[int, str, bytes]:
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == b"/metrics":
            await self._queues.refresh()
            accept = ""
            for name, value in request.headers:
                if name == b"accept":
                    accept = value.decode("latin-1")
            encode, content_type = choose_encoder(accept)
            return 200, content_type, encode(self.registry)
        if path in (b"/healthz", b"/readyz"):
            healthy, doc = self.health()
            return (200 if healthy else 503), "application/json", _encoder.encode(doc)
        return 404, "text/plain", b"not found: try /metrics or /healthz\n"

    @staticmethod
    async def _send(
        stream: anyio.abc.ByteStream, conn: h11.Connection, status: int, ctype: str, body: bytes
    ) -> None:
        headers = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers))
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") if body else data
            data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
            await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, h11.LocalProtocolError):
            pass  # the client went away: nothing to tell it
