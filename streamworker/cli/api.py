"""``streamworker api`` (the HTTP API server) and ``streamworker cancel``."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import anyio
import msgspec
import typer

from ..broker import connect_to
from ..cancel import CancelOutcome, CancelResult, TaskCanceller
from ..observability import Observability, build_observability
from ..observability.logging import configure_logging
from ..registry import load_handler_modules
from ..settings import ConfigError
from . import app, fail, load_settings, run_async
from .common import redis_errors

if TYPE_CHECKING:
    # Litestar and uvicorn load only for ``streamworker api``: the other commands stay quick.
    from ..api import ApiServer


async def _serve_until_signalled(server: ApiServer, obs: Observability) -> None:
    # The receiver is open before the server starts: a SIGTERM that arrives as soon as the
    # server answers is queued here rather than killing the process with the default action.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with obs.running(), anyio.create_task_group() as tg:
            await tg.start(server.serve)
            async for _ in signals:
                server.stop()
                break


@app.command()
def api(
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="PORT")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth", help="Serve /api/ without tokens (never in production)."
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (submit, status, cancel, stats, dead letters; probes; metrics)."""
    settings = load_settings()
    if not settings.redis_url:
        fail("configuration error: REDIS_URL is required (e.g. redis://localhost:6379/0)", 2)
    if not settings.api_tokens and not insecure_no_auth:
        fail(
            "configuration error: API_TOKENS is empty: set at least one token "
            "(or pass --insecure-no-auth)",
            2,
        )
    from ..api import ApiServer, create_app

    configure_logging(settings.log_level)
    try:
        load_handler_modules(settings.handler_modules)
    except ImportError as exc:
        fail(str(exc))
    # Tracing for submits (PRODUCER spans); /metrics serves the process's default registry.
    obs = build_observability(settings, metrics=False, process_wide=True)
    try:
        application = create_app(
            settings, allow_no_auth=insecure_no_auth, producer_hooks=obs.producer_hooks
        )
    except ConfigError as exc:
        fail(str(exc), 2)
    server = ApiServer(application, host=host, port=port or settings.port)
    anyio.run(_serve_until_signalled, server, obs)


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Cancel a queued or scheduled task so it will not run."""
    settings = load_settings()

    async def go() -> CancelResult:
        redis = connect_to(settings)
        try:
            canceller = TaskCanceller(
                redis, settings.keyspace(), settings.completed_ttl_seconds, group=settings.group
            )
            return await canceller.cancel(task_id)
        finally:
            await redis.aclose()

    with redis_errors(settings):
        result = run_async(go)
    if result.outcome is CancelOutcome.UNKNOWN:
        fail(f"task {task_id} not found (unknown, or expired after its retention)")
    if result.outcome is CancelOutcome.CONFLICT:
        fail(result.refusal)
    if as_json:
        doc = {"task_id": task_id, "status": "cancelled", "cancelled": True}
        print(msgspec.json.encode(doc).decode())
        return
    already = " (it already was)" if result.outcome is CancelOutcome.ALREADY_CANCELLED else ""
    print(f"task {task_id} cancelled{already}")
