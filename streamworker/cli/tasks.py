"""publish, status, stats."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
import msgspec
import typer
from rich.console import Console
from rich.table import Table

from ..broker import connect_to
from ..errors import InvalidTask
from ..producer import Producer
from ..registry import default_registry, load_handler_modules
from ..stats import QueueStats, collect_stats
from ..status import StatusStore
from . import app, fail, load_settings, run_async
from .common import redis_errors


@app.command()
def publish(
    task_type: Annotated[str, typer.Argument(help="Task type (the handler's name).")],
    payload: Annotated[str, typer.Option("--payload", help="JSON object.")] = "{}",
    priority: Annotated[str, typer.Option(help="critical, high, normal or low.")] = "normal",
    delay: Annotated[float | None, typer.Option(help="Seconds to wait before running.")] = None,
    scheduled_for: Annotated[
        str | None,
        typer.Option("--scheduled-for", help="RFC 3339 time, e.g. 2025-09-01T14:00:00Z."),
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Handler timeout (s).")] = None,
    correlation_id: Annotated[str | None, typer.Option("--correlation-id")] = None,
    partition_key: Annotated[
        str | None,
        typer.Option("--partition-key", help="Same key, same partition: read in publish order."),
    ] = None,
) -> None:
    """Publish one task and print its task_id."""
    settings = load_settings()
    try:
        body = json.loads(payload)
    except ValueError:
        fail("--payload is not valid JSON", 2)
    if not isinstance(body, dict):
        fail("--payload must be a JSON object", 2)
    try:
        load_handler_modules(settings.handler_modules)
    except ImportError as exc:
        fail(str(exc))

    async def go() -> str:
        # Tracing only (a PRODUCER span, and traceparent in the entry) when OTEL_* turns it
        # on; nothing is installed otherwise. No audit sinks for a one-shot command.
        from ..observability import build_observability

        obs = build_observability(settings.with_overrides(audit_enabled=False), metrics=False)
        producer = Producer.from_settings(
            settings,
            contracts=default_registry.contracts,
            require_known_type=True,
            hooks=obs.producer_hooks,
        )
        try:
            return await producer.publish(
                task_type,
                body,
                priority=priority,
                delay=delay,
                scheduled_for=scheduled_for,
                max_retries=max_retries,
                timeout_seconds=timeout,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                partition_key=partition_key,
            )
        finally:
            await producer.aclose()
            if obs.tracer_provider is not None:  # export the span before the process ends
                await anyio.to_thread.run_sync(obs.tracer_provider.shutdown)

    with redis_errors(settings):
        try:
            task_id = run_async(go)
        except InvalidTask as exc:
            fail(f"invalid task: {exc}")
    print(task_id)


@app.command()
def status(
    task_id: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Show a task's status (kept for COMPLETED_TTL_SECONDS after it ends)."""
    settings = load_settings()

    async def go() -> Any:
        redis = connect_to(settings)
        try:
            store = StatusStore(settings.keyspace(), settings.completed_ttl_seconds)
            return await store.read(redis, task_id)
        finally:
            await redis.aclose()

    with redis_errors(settings):
        found = run_async(go)
    if found is None:
        fail(f"task {task_id} not found (unknown, or expired after its retention)")
    if as_json:
        print(msgspec.json.encode(found).decode())
        return
    table = Table(show_header=False, box=None)
    for name in found.__struct_fields__:
        value = getattr(found, name)
        table.add_row(name, "" if value is None else str(value))
    Console().print(table)


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    partitions: Annotated[
        bool, typer.Option("--partitions", help="Also one row per partition and its streams.")
    ] = False,
) -> None:
    """Per priority: length, pending, lag, oldest pending age, consumers; delayed; dead letters."""
    settings = load_settings()

    async def go() -> QueueStats:
        redis = connect_to(settings)
        try:
            return await collect_stats(redis, settings.keyspace(), settings.group)
        finally:
            await redis.aclose()

    with redis_errors(settings):
        result = run_async(go)
    if as_json:
        print(msgspec.json.encode(result).decode())
        return
    print_stats(result, partitions=partitions)


def print_stats(
    result: QueueStats, console: Console | None = None, *, partitions: bool = False
) -> None:
    """The stats table; with ``partitions`` (and STREAM_PARTITIONS > 1) one row per partition,
    naming its stream, as raw XADD producers need them."""
    split = partitions and bool(result.partitions)
    rows = result.partitions if split else result.priorities
    table = Table(title=f"group {result.group}")
    columns = ["partition", "stream"] if split else ["priority"]
    columns += ["length", "pending", "lag", "backlog", "oldest pending", "consumers", "delayed"]
    for column in columns:
        table.add_column(column, justify="left" if column in {"priority", "stream"} else "right")
    for p in rows:
        age = (
            "-" if p.oldest_pending_age_seconds is None else f"{p.oldest_pending_age_seconds:.1f}s"
        )
        head = [str(p.partition), p.stream] if split else [p.priority]
        table.add_row(
            *head,
            str(p.length),
            str(p.pending),
            f"{p.lag}{'' if p.lag_exact else '*'}",
            str(p.backlog),
            age,
            str(p.consumers),
            str(p.delayed),
        )
    (console or Console()).print(table)
    (console or Console()).print(
        f"delayed: {result.delayed}   dead letters: {result.dead_letters}   "
        "(* lag computed as length - pending: Redis reports none after deletions)"
    )
