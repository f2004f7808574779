"""worker and dev: the long-running commands."""

from __future__ import annotations

import signal
from typing import Annotated

import anyio
import typer

from ..observability import Observability, build_observability
from ..observability.logging import configure_logging
from ..registry import default_registry, load_handler_modules
from ..settings import Settings
from ..worker import Worker
from . import app, fail, load_settings
from .common import redis_errors


async def serve_until_signalled(worker: Worker, obs: Observability | None = None) -> None:
    """Run the worker; SIGTERM or SIGINT starts its graceful stop."""
    if obs is not None:
        async with obs.running():
            await serve_until_signalled(worker)
        return
    # Signals are watched from the start: one that arrives while the worker is still starting
    # (e.g. waiting for Redis) stops it too, instead of killing the process.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            async for _ in signals:
                worker.stop()
                break


def _load_handlers(settings: Settings) -> None:
    try:
        load_handler_modules(settings.handler_modules)
    except ImportError as exc:
        fail(str(exc))


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Handlers in flight (WORKER_COUNT).")
    ] = None,
) -> None:
    """Consume the priority streams and run handlers until SIGTERM/SIGINT."""
    settings = load_settings()
    if not settings.redis_url:
        fail("configuration error: REDIS_URL is required (e.g. redis://localhost:6379/0)", 2)
    configure_logging(settings.log_level, settings.otel_service_name, settings.consumer)
    _load_handlers(settings)
    obs = build_observability(settings, task_types=default_registry, process_wide=True)
    worker = Worker(settings, hooks=obs.task_hooks, concurrency=concurrency, metrics=obs.metrics)
    with redis_errors(settings):
        try:
            anyio.run(serve_until_signalled, worker, obs)
        except BaseExceptionGroup as group:
            raise _single(group) from None


def _single(error: BaseException) -> BaseException:
    """The one error inside nested task-group wrappers, so it is reported as one line."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@app.command()
def dev(
    demo: Annotated[
        bool, typer.Option("--demo", help="Publish sample tasks and show progress.")
    ] = False,
    demo_count: Annotated[int, typer.Option("--demo-count", min=1, help="Tasks per type.")] = 300,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="Stop once the demo tasks are done.")
    ] = False,
) -> None:
    """Embedded mode: a private redis-server (when REDIS_URL is unset) and a worker."""
    from ..dev import run_dev

    settings = load_settings()
    configure_logging(
        "warning" if demo else settings.log_level, settings.otel_service_name, settings.consumer
    )
    _load_handlers(settings)
    with redis_errors(settings):
        anyio.run(run_dev, settings, demo, demo_count, exit_after_demo)
