"""``streamworker`` command line (CONTRACT.md §6): thin commands over the service layer.

Exit status: 0 success, 1 failure, 2 usage or configuration error; errors are one line on
stderr; ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from ..settings import ConfigError, Settings

app = typer.Typer(
    name="streamworker",
    help="Event-driven background tasks on Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except ConfigError as exc:
        fail(str(exc), 2)


def run_async(fn: Callable[[], Any]) -> Any:
    import anyio

    return anyio.run(fn)


def _register() -> None:
    # Each module adds its commands to ``app``.
    from . import api, dlq, partitions, run, schedules, schema, tasks  # noqa: F401


def main() -> None:
    _register()
    app()  # standalone: usage errors exit 2, typer.Exit(code) exits with code
