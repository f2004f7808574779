"""``streamworker dev``: everything in one process tree for a laptop.

With REDIS_URL unset a private redis-server is started on a free port in a temporary
directory and removed on exit. The HTTP API is served on 127.0.0.1:PORT (a free port when
that one is taken) with a generated token, printed with a curl line. ``--demo`` publishes
sample tasks of every type and shows their progress until they are done.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .api.devserver import serve_dev_api
from .channels.smtp_sink import SmtpSink
from .embedded import EmbeddedRedis
from .hooks import Outcome, ProducerHook, TaskEnd
from .observability import build_observability
from .producer import Producer, TaskSpec
from .registry import default_registry
from .scheduler import Scheduler, load_schedules
from .settings import Settings
from .stats import collect_stats
from .wire import Rejected, Task
from .worker import Worker

console = Console(stderr=True)

DEMO_TYPES = ("test_notification", "data_processing", "send_medication_reminder", "care_alert")


def demo_payload(task_type: str, i: int) -> dict[str, Any]:
    if task_type == "test_notification":
        return {"message": "Test notification"}
    if task_type == "data_processing":
        return {"numbers": [random.uniform(0, 100) for _ in range(50)], "operation": "average"}
    if task_type == "send_medication_reminder":
        return {
            "user_id": str(uuid.uuid4()),
            "medication_name": "Lisinopril",
            "dosage": "10mg",
            "reminder_time": f"{i % 24:02d}:00",
        }
    return {"patient_ref": f"p-{i}", "alert": random.choice(["fall", "missed_checkin", "vitals"])}


class _Tally:
    """Counts finished runs by task type, for the progress display."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()

    def before(self, task: Task, started_at: float, enqueued_at: float) -> None:
        return None

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        if end.outcome in (Outcome.COMPLETED, Outcome.DEAD_LETTERED):
            self.done[task.task_type] += 1

    def rejected(self, rejected: Rejected, priority: str) -> None:
        self.done[rejected.task_type or "?"] += 1


async def run_dev(settings: Settings, demo: bool, demo_count: int, exit_after_demo: bool) -> None:
    # Checked before anything starts: a bad schedule is a configuration error (exit 2).
    schedules = load_schedules(settings, default_registry)
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = await anyio.to_thread.run_sync(lambda: EmbeddedRedis().start())
        settings = settings.with_overrides(redis_url=embedded.url)
        console.print(f"[bold]streamworker dev[/]: private redis-server at {embedded.url}")
    else:
        console.print("[bold]streamworker dev[/]: using REDIS_URL")
    sink, settings = _start_mail_sink(settings)
    tally = _Tally()
    # metrics on even without METRICS_PORT: the dev API's /metrics serves them
    obs = build_observability(
        settings, task_types=default_registry, metrics=True, process_wide=True
    )
    worker = Worker(settings, hooks=[*obs.task_hooks, tally], metrics=obs.metrics)
    scheduler = Scheduler(settings, schedules)
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with obs.running(), anyio.create_task_group() as tg:
                await tg.start(worker.run)
                await tg.start(scheduler.run)
                api = await tg.start(serve_dev_api, settings, console, obs.producer_hooks)
                console.print(
                    f"worker {settings.consumer} up: {worker.concurrency} handler slots, "
                    f"{len(default_registry)} task types, {len(scheduler.schedules)} schedules; "
                    "Ctrl+C to stop"
                )
                if demo:
                    await _demo(settings, tally, demo_count, obs.producer_hooks)
                    if sink is not None:
                        await _show_mail(sink)
                    if exit_after_demo:
                        scheduler.stop()
                        worker.stop()
                        api.stop()
                        return
                async for _ in signals:
                    console.print("stopping: letting in-flight tasks finish")
                    scheduler.stop()
                    worker.stop()
                    api.stop()
                    break
    finally:
        if sink is not None:
            sink.stop()
        if embedded is not None:
            await anyio.to_thread.run_sync(embedded.close)


def _start_mail_sink(settings: Settings) -> tuple[SmtpSink | None, Settings]:
    """With SMTP_HOST unset, reminders and alerts go to a local SMTP sink (aiosmtpd, a
    development dependency) and recipients get ``<ref>@patients.example`` addresses."""
    if settings.smtp_host:
        return None, settings
    try:
        sink = SmtpSink().start()
    except ImportError:
        console.print("no SMTP sink (aiosmtpd is not installed): e-mail is not configured")
        return None, settings
    console.print(f"local SMTP sink at {sink.host}:{sink.port} (SMTP_HOST unset)")
    return sink, settings.with_overrides(
        smtp_host=sink.host,
        smtp_port=sink.port,
        smtp_from="care-notifications@streamworker.dev",
        recipient_email_domain=settings.recipient_email_domain or "patients.example",
    )


async def _show_mail(sink: SmtpSink) -> None:
    """What the demo's notifications delivered: counts by subject and a few examples."""
    await anyio.sleep(0.2)  # the last messages may still be in the sink's hands
    messages = list(sink.messages)
    subjects = Counter(str(m["Subject"]) for m in messages)
    console.print(f"delivered by e-mail to the local SMTP sink: {len(messages)} messages")
    for subject, n in subjects.most_common(6):
        console.print(f"  {n:>5}  {subject}")
    for message in messages[:3]:
        body = message.get_body(("plain",))
        text = body.get_content().strip() if body is not None else ""
        console.print(f"  e.g. to {message['To']}: {text[:80]}")


async def _demo(
    settings: Settings, tally: _Tally, count: int, hooks: list[ProducerHook] | None = None
) -> None:
    producer = Producer.from_settings(
        settings, contracts=default_registry.contracts, require_known_type=True, hooks=hooks or ()
    )
    types = [t for t in DEMO_TYPES if t in default_registry]
    priorities = {
        "care_alert": "high",
        "send_medication_reminder": "high",
        "data_processing": "low",
    }
    started = time.perf_counter()
    try:
        specs = [
            TaskSpec(task_type=t, payload=demo_payload(t, i), priority=priorities.get(t, "normal"))
            for i in range(count)
            for t in types
        ]
        random.shuffle(specs)
        for i in range(0, len(specs), 500):
            await producer.publish_many(specs[i : i + 500])
        with Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bars = {t: progress.add_task(t, total=count) for t in types}
            while True:
                for t, bar in bars.items():
                    progress.update(bar, completed=tally.done[t])
                if all(tally.done[t] >= count for t in types):
                    break
                await anyio.sleep(0.1)
        elapsed = time.perf_counter() - started
        total = count * len(types)
        stats = await collect_stats(producer.redis, producer.keys, settings.group)
        outbox = await producer.redis.xlen(producer.keys.notification_outbox)
        console.print(
            f"demo: {total} tasks published and handled in {elapsed:.2f}s "
            f"({total / elapsed:,.0f} tasks/s); backlog {stats.backlog}, "
            f"dead letters {stats.dead_letters}, notification outbox {outbox}"
        )
    finally:
        await producer.aclose()
