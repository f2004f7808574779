"""scheduler, and schedules list / run / pause / resume."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import anyio
import msgspec
import typer
from prometheus_client import start_http_server
from rich.console import Console
from rich.table import Table

from ..broker import connect_to
from ..observability.logging import configure_logging
from ..registry import default_registry, load_handler_modules
from ..scheduler import (
    Schedule,
    ScheduleControl,
    ScheduleError,
    Scheduler,
    UnknownSchedule,
    load_schedules,
)
from ..settings import ConfigError, Settings
from . import app, fail, load_settings, run_async
from .common import redis_errors

T = TypeVar("T")

schedules_app = typer.Typer(
    name="schedules",
    help="Recurring tasks: list, run now, pause, resume.",
    no_args_is_help=True,
)
app.add_typer(schedules_app)

log = logging.getLogger("streamworker.scheduler")


def _settings_and_schedules(*, logs: bool = False) -> tuple[Settings, list[Schedule]]:
    settings = load_settings()
    if not settings.redis_url:
        fail("configuration error: REDIS_URL is required (e.g. redis://localhost:6379/0)", 2)
    if logs:
        configure_logging(settings.log_level)
    try:
        load_handler_modules(settings.handler_modules)
    except ImportError as exc:
        fail(str(exc))
    return settings, loaded_schedules(settings, log_left_out=logs)


def loaded_schedules(settings: Settings, *, log_left_out: bool = False) -> list[Schedule]:
    """Code and file schedules, validated; a bad one is a configuration error (exit 2).

    ``optional`` schedules without a handler are left out; the scheduler logs which."""

    def left_out(name: str) -> None:
        if log_left_out:
            log.warning("schedule_left_out_no_handler", extra={"schedule": name})

    try:
        return load_schedules(settings, default_registry, warn=left_out)
    except (ScheduleError, ConfigError) as exc:
        fail(str(exc), 2)


async def serve_scheduler(scheduler: Scheduler) -> None:
    """Run until SIGTERM or SIGINT, then stop and free the lease."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            async for _ in signals:
                scheduler.stop()
                break


@app.command()
def scheduler() -> None:
    """Publish recurring tasks on time; safe to run on every replica (one leads at a time)."""
    settings, schedules = _settings_and_schedules(logs=True)
    if settings.metrics_port is not None:
        # /metrics (and any other path, e.g. /healthz for the probes) from a daemon thread.
        try:
            start_http_server(settings.metrics_port)
        except OSError as exc:
            fail(f"cannot serve metrics on METRICS_PORT {settings.metrics_port}: {exc.strerror}")
    with redis_errors(settings):  # also turns a ConfigError into exit status 2
        anyio.run(serve_scheduler, Scheduler(settings, schedules))


def _with_control(
    settings: Settings, schedules: list[Schedule], action: Callable[[ScheduleControl], Awaitable[T]]
) -> T:
    async def go() -> T:
        redis = connect_to(settings)
        try:
            return await action(ScheduleControl(settings, redis, schedules))
        finally:
            await redis.aclose()

    with redis_errors(settings):
        try:
            result: T = run_async(go)
        except UnknownSchedule as exc:
            fail(str(exc))
    return result


@schedules_app.command("list")
def list_schedules(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Every schedule with its next fire time, paused flag and last fire."""
    settings, schedules = _settings_and_schedules()
    views = _with_control(settings, schedules, lambda control: control.list())
    if as_json:
        print(msgspec.json.encode({"schedules": views}).decode())
        return
    table = Table(title="schedules")
    for column in ("name", "cron", "timezone", "task type", "next fire", "last fire", "state"):
        table.add_column(column, no_wrap=column != "task type")
    for view in views:
        state = "disabled" if not view.enabled else "paused" if view.paused else "active"
        table.add_row(
            view.name,
            view.cron,
            view.timezone,
            view.task_type,
            view.next_fire or "-",
            view.last_fire or "-",
            state,
        )
    # Piped output gets room for whole names and times instead of 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@schedules_app.command("run")
def run_schedule(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Publish one task of the schedule now (its regular times are unchanged); print its id."""
    settings, schedules = _settings_and_schedules()
    print(_with_control(settings, schedules, lambda control: control.run_now(name)))


@schedules_app.command("pause")
def pause_schedule(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Stop firing the schedule until resumed (occurrences meanwhile are dropped)."""
    settings, schedules = _settings_and_schedules()
    _with_control(settings, schedules, lambda control: control.pause(name))
    print(f"paused {name}")


@schedules_app.command("resume")
def resume_schedule(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Fire the schedule again from its next occurrence."""
    settings, schedules = _settings_and_schedules()
    _with_control(settings, schedules, lambda control: control.resume(name))
    print(f"resumed {name}")
