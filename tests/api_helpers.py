"""Serving the real API app with uvicorn on a loopback socket, for the API tests.

``serving_api`` runs it in the test's event loop (beside an in-process worker);
``ThreadedApi`` runs it in its own thread and loop, for synchronous clients (schemathesis).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from contracts import MedicationReminder, TestNotification
from handlers.notifications import send_medication_reminder, test_notification
from streamworker import Registry, Settings, TaskContext
from streamworker.api import ApiServer, create_app

TOKEN = "test-token-one"
OTHER_TOKEN = "test-token-two"


class Sleep(msgspec.Struct, kw_only=True):
    seconds: float = 0.0


def api_registry(**extra: Any) -> Registry:
    """The seed's task types with their real handlers and contracts, plus test types."""
    registry = Registry()
    registry.handler("test_notification", contract=TestNotification, max_retries=1)(
        test_notification
    )
    registry.handler("send_medication_reminder", contract=MedicationReminder)(
        send_medication_reminder
    )

    @registry.handler("always_fails")
    async def always_fails(payload: dict[str, Any], ctx: TaskContext) -> None:
        raise RuntimeError("the downstream service refused")

    for name, fn in extra.items():
        registry.handler(name)(fn)
    return registry


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


def api_settings(settings: Settings, **changes: Any) -> Settings:
    return settings.with_overrides(api_tokens=(TOKEN, OTHER_TOKEN), **changes)


@asynccontextmanager
async def serving_api(
    settings: Settings, registry: Registry | None = None, **options: Any
) -> AsyncIterator[str]:
    """The app on a real uvicorn server in this event loop; yields its base URL."""
    app = create_app(settings, registry=registry or api_registry(), **options)
    sock = loopback_socket()
    server = ApiServer(app, sock=sock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.stop()


class ThreadedApi:
    """The app on a real uvicorn server in a thread of its own."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self._sock = loopback_socket()
        self._server = ApiServer(
            create_app(settings, registry=registry or api_registry()), sock=self._sock
        )
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _run(self) -> None:
        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(self._server.serve)
                self._ready.set()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    def __enter__(self) -> ThreadedApi:
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError(f"the API server did not start: {self._failure!r}")
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop()
        self._thread.join(30)
