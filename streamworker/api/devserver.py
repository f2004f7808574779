"""The API inside ``streamworker dev``: loopback only, a generated token, a curl line to paste."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Sequence

import anyio
import anyio.abc
from rich.console import Console
from rich.markup import escape

from ..hooks import ProducerHook
from ..settings import Settings
from .app import create_app
from .server import ApiServer

__all__ = ["serve_dev_api"]


def _bind(port: int) -> socket.socket:
    """The loopback socket on ``port``, or on a free port when that one is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    return sock


async def serve_dev_api(
    settings: Settings,
    console: Console,
    producer_hooks: Sequence[ProducerHook] = (),
    *,
    task_status: anyio.abc.TaskStatus[ApiServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until the returned server's ``stop()``; ``tg.start`` gives the server."""
    if settings.api_tokens:
        # A configured token is a real secret: never printed.
        token_shown = "$API_TOKEN"  # noqa: S105
    else:
        token_shown = secrets.token_urlsafe(24)
        settings = settings.with_overrides(api_tokens=(token_shown,))
    sock = _bind(settings.port)
    server = ApiServer(create_app(settings, producer_hooks=producer_hooks), sock=sock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        console.print(
            f"API at {url} (OpenAPI: {url}/schema/swagger), bearer token {escape(token_shown)}\n"
            f"  curl -X POST {url}/api/v1/tasks/submit -H 'Content-Type: application/json' "
            f"-H 'Authorization: Bearer {escape(token_shown)}' "
            """-d '{"task_type": "test_notification", "priority": "normal", """
            """"payload": {"message": "Test notification"}}'""",
            soft_wrap=True,
            highlight=False,
        )
        task_status.started(server)
