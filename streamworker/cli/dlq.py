"""dlq list / show / replay / purge: thin commands over :mod:`streamworker.deadletters`."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..deadletters import DeadLetterDetail, DeadLetters, InvalidDeadLetterId, ReplaySummary
from ..settings import Settings
from ..wire import DLQ_REASONS
from . import app, fail, load_settings, run_async
from .common import redis_errors

dlq = typer.Typer(
    name="dlq",
    help="Inspect, replay and purge dead letters (the failed_tasks stream).",
    no_args_is_help=True,
)
app.add_typer(dlq, name="dlq")

T = TypeVar("T")

_SHOW_PROBLEMS = 20  # failed / skipped entries named one by one; the rest are counted

_SHOWN_ABOVE = frozenset({"task_id", "task_type", "retry_count", "replayed_from"})

_DETAILS = {
    "not_found": "no such dead letter (already replayed or purged?)",
    "unknown_source_stream": "its source_stream is not one of this deployment's priority streams",
    "missing_source_stream": "it has no source_stream",
    "source_mismatch": "its source_stream changed while replaying",
    "partition_mismatch": "it is in another partition's dead letters than its source stream"
    " (STREAM_PARTITIONS changed since it failed)",
    "gone": "removed while replaying (by another replay or a purge)",
}


def _run(settings: Settings, action: Callable[[DeadLetters], Awaitable[T]]) -> T:
    async def go() -> T:
        service = DeadLetters.from_settings(settings)
        try:
            return await action(service)
        finally:
            await service.aclose()

    with redis_errors(settings):
        try:
            result: T = run_async(go)
        except InvalidDeadLetterId as exc:
            fail(str(exc), 2)
    return result


def _check_reason(reason: str | None) -> None:
    if reason is not None and reason not in DLQ_REASONS:
        fail(f"--reason {reason!r} is not a dead-letter reason; one of {', '.join(DLQ_REASONS)}", 2)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _capacity(settings: Settings, size: int) -> str | None:
    cap = settings.dead_letter_max_length
    if cap and size >= 0.9 * cap:
        return f"failed_tasks is at {size} of its cap {cap}: the oldest entries will be dropped"
    return None


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


@dlq.command("list")
def list_(
    task_type: Annotated[str | None, typer.Option("--task-type", help="Only this type.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Only this dlq_reason.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    after: Annotated[
        str | None, typer.Option("--after", help="Cursor: list entries older than this id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Dead letters, newest first (never their payloads)."""
    _check_reason(reason)
    settings = load_settings()
    page = _run(
        settings, lambda s: s.list(task_type=task_type, reason=reason, limit=limit, after=after)
    )
    if as_json:
        _print_json(page)
        return
    table = Table(
        title=f"dead letters: {len(page.entries)} shown of {page.total}, newest first",
        box=box.SIMPLE_HEAD,  # no inner rules: more room for the error text
        caption=_capacity(settings, page.total),
    )
    for column in ("id", "task type", "reason", "error", "source", "deliveries", "age"):
        # The id never wraps (it is copied into dlq show / replay); in a narrow terminal the
        # other cells wrap rather than vanish or get cropped (dlq show has everything whole).
        table.add_column(
            column,
            justify="right" if column in ("deliveries", "age") else "left",
            no_wrap=column == "id",
            overflow="fold",
        )
    for e in page.entries:
        table.add_row(
            e.id,
            Text(e.task_type or "-"),
            e.reason or "-",
            Text((e.error or "")[:120]),
            Text(e.priority or e.source_stream or "-"),
            "-" if e.deliveries is None else str(e.deliveries),
            _age(e.age_seconds),
        )
    console = Console()
    console.print(table)
    if page.next_cursor:
        console.print(Text(f"more: streamworker dlq list --after {page.next_cursor}"))


@dlq.command("show")
def show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="Dead-letter entry id.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """One dead letter with its payload (a developer's inspection tool).

    Payloads may hold patient data: do not paste this output into tickets or logs."""
    settings = load_settings()
    found: DeadLetterDetail | None = _run(settings, lambda s: s.get(entry_id))
    if found is None:
        fail(f"dead letter {entry_id} not found (already replayed or purged?)")
    if as_json:
        _print_json(found)
        return
    table = Table(show_header=False, box=None)
    for name in found.__struct_fields__:
        if name in ("payload", "fields"):
            continue
        value = getattr(found, name)
        table.add_row(name, Text("" if value is None else str(value)))
    for name, value in sorted(found.fields.items()):
        if name in _SHOWN_ABOVE:
            continue
        table.add_row(Text(f"field {name}"), Text(value))
    payload = found.payload or ""
    with contextlib.suppress(ValueError):  # not JSON (a malformed entry): show it as it is
        payload = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    table.add_row("payload", Text(payload))
    Console().print(table)


@dlq.command("replay")
def replay(
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="A dead-letter id (repeat for more).")
    ] = None,
    task_type: Annotated[str | None, typer.Option("--task-type")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")
    ] = False,
    rate: Annotated[
        float | None, typer.Option("--rate", help="At most N entries per second.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Summary as one JSON document.")] = False,
) -> None:
    """Put dead letters back on their source stream (retry_count 0, replayed_from set).

    Each entry moves atomically: re-added and removed from failed_tasks in one step."""
    chosen = sum((bool(ids), task_type is not None or reason is not None, all_))
    if chosen != 1:
        fail("choose one of --id ID..., --task-type T / --reason R, or --all", 2)
    if rate is not None and not 0 < rate < math.inf:
        fail("--rate must be a number > 0 (entries per second)", 2)
    _check_reason(reason)
    settings = load_settings()
    stderr = Console(stderr=True)
    with Progress(
        TextColumn("dry run" if dry_run else "replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=as_json,
    ) as bar:
        job = bar.add_task("replay", total=None)

        def progress(done: int, matched: int) -> None:
            bar.update(job, completed=done, total=matched)

        summary: ReplaySummary = _run(
            settings,
            lambda s: s.replay(
                ids=ids or None,
                task_type=task_type,
                reason=reason,
                all=all_,
                dry_run=dry_run,
                rate_per_second=rate,
                progress=progress,
            ),
        )
    if as_json:
        _print_json(summary)
    else:
        problems = [i for i in summary.items if i.outcome in ("failed", "skipped")]
        for item in problems[:_SHOW_PROBLEMS]:
            detail = _DETAILS.get(item.detail or "", item.detail or "")
            stderr.print(Text(f"{item.outcome} {item.id}: {detail}"))
        if len(problems) > _SHOW_PROBLEMS:
            stderr.print(f"... and {len(problems) - _SHOW_PROBLEMS} more (--json lists them all)")
        if dry_run:
            line = f"dry run: would replay {summary.would_replay}, would fail {summary.failed}"
        else:
            line = f"replayed {summary.replayed}, failed {summary.failed}"
        print(f"{line}, skipped {summary.skipped} (of {summary.matched} matched)")
    if summary.failed:
        raise typer.Exit(1)


@dlq.command("purge")
def purge(
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", min=0, help="Only entries older than S seconds."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (required).")] = False,
) -> None:
    """Delete dead letters for good (all of them, or those older than --older-than)."""
    if not yes:
        fail("purge deletes dead letters for good; add --yes to confirm", 2)
    settings = load_settings()
    removed = _run(settings, lambda s: s.purge(older_than))
    print(f"purged {removed} dead letters")
