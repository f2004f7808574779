"""``streamworker partitions``: the partition streams, and changing their number."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from ..broker import connect_to
from ..keyspace import MAX_PARTITIONS, Keyspace
from ..partitions import Migration, MigrationRefused, MigrationReport
from . import app, fail, load_settings, run_async
from .common import redis_errors

partitions = typer.Typer(
    name="partitions",
    help="The partition streams (STREAM_PARTITIONS) and changing how many there are.",
    no_args_is_help=True,
)
app.add_typer(partitions, name="partitions")


class _Row(msgspec.Struct):
    partition: int
    priority: str
    stream: str
    delayed: str
    dead_letters: str


@partitions.command("list")
def list_partitions(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Every partition stream by name: where raw XADD producers may write."""
    keys = load_settings().keyspace()
    rows = [
        _Row(f.partition, f.priority, f.stream, f.delayed, f.dead_letters)
        for p in range(keys.partitions)
        for f in keys.partition_families(p)
    ]
    if as_json:
        print(msgspec.json.encode(rows).decode())
        return
    table = Table(title=f"{keys.partitions} partition(s)")
    for column in ("partition", "priority", "stream", "dead letters"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row.partition), row.priority, row.stream, row.dead_letters)
    Console().print(table)


@partitions.command("migrate")
def migrate(
    old: Annotated[
        int,
        typer.Option(
            "--from",
            min=1,
            max=MAX_PARTITIONS,
            help="The partition count the deployment ran with until now.",
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Move a drained deployment from --from partitions to STREAM_PARTITIONS: delayed tasks,
    dead letters and idempotency keys. Refuses while the old streams hold entries."""
    settings = load_settings()
    new = settings.keyspace()
    if old == new.partitions:
        fail(f"--from {old} is the same as STREAM_PARTITIONS: nothing to move", 2)
    previous = Keyspace(settings.prefix, partitions=old, cluster=settings.redis_cluster)

    async def go() -> MigrationReport:
        redis = connect_to(settings)
        try:
            return await Migration(redis, previous, new, settings.group).run(dry_run=dry_run)
        finally:
            await redis.aclose()

    with redis_errors(settings):
        try:
            report = run_async(go)
        except MigrationRefused as exc:
            fail(str(exc))
    if as_json:
        print(msgspec.json.encode(report).decode())
        return
    verb = "would move" if dry_run else "moved"
    print(
        f"{old} -> {new.partitions} partitions: {verb} {report.delayed} delayed tasks, "
        f"{report.dead_letters} dead letters, {report.idempotency_keys} idempotency keys, "
        f"{report.task_keys} task statuses and cancel markers; "
        f"deleted {report.streams_deleted} empty old streams"
    )
