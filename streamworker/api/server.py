"""Serving the app with uvicorn inside an anyio task group (the CLI, dev mode, tests).

The owner of the process handles SIGTERM/SIGINT and calls :meth:`ApiServer.stop`; uvicorn's
own signal capture is turned off so it does not take the signals from the worker beside it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import anyio
import anyio.abc
import uvicorn
from litestar import Litestar

__all__ = ["ApiServer"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(
        self,
        app: Litestar,
        *,
        host: str = "0.0.0.0",
        port: int = 8086,
        sock: socket.socket | None = None,
        access_log: bool = False,
    ) -> None:
        self._sock = sock
        if sock is not None:
            # asyncio turns Nagle off only on sockets made with IPPROTO_TCP; otherwise the
            # response's header and body writes wait on the client's delayed ACK (~40 ms).
            # Accepted connections inherit the option from the listening socket.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # our JSON logging stays in charge
            access_log=access_log,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        self._server = _Server(config)

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for listener in server.sockets:
                return int(listener.getsockname()[1])
        return int(self._server.config.port)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`stop`; ready (``tg.start``) once the socket accepts requests."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._server.serve, [self._sock] if self._sock else None)
                while not self._server.started:
                    if self._server.should_exit:
                        raise RuntimeError("the API server could not start (see the log)")
                    await anyio.sleep(0.02)
                task_status.started()
        finally:
            if self._sock is not None:
                self._sock.close()

    def stop(self) -> None:
        self._server.should_exit = True
