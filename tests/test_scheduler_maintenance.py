"""The default maintenance schedules and their handlers, against a real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis

import handlers.maintenance as maintenance_handlers
from contracts import DeadLetterAgeReport, StatusCleanupReport
from streamworker import Producer, Settings, TaskContext
from streamworker.context import Outbox, bind_maintenance
from streamworker.keyspace import Keyspace
from streamworker.maintenance import Maintenance
from streamworker.registry import default_registry
from streamworker.scheduler import load_schedules
from streamworker.status import StatusStore
from tests.conftest import running_worker, wait_for

pytestmark = pytest.mark.anyio


def _ctx(redis: aioredis.Redis, keys: Keyspace, task_type: str) -> TaskContext:
    return TaskContext(
        task_id="t-1",
        task_type=task_type,
        attempt=1,
        max_retries=1,
        priority="low",
        correlation_id=None,
        outbox=Outbox(redis, keys.notification_outbox),
    )


async def _seed_statuses(redis: aioredis.Redis, settings: Settings) -> Keyspace:
    keys = Keyspace(settings.prefix)
    producer = Producer.from_settings(settings, redis=redis)
    for i in range(3):
        await producer.publish("noop", {"i": i})  # queued, no TTL
    store = StatusStore(keys, settings.completed_ttl_seconds)
    pipe = redis.pipeline(transaction=False)
    store.write(pipe, "done-1", "completed", task_type="noop")
    store.write(pipe, "done-2", "failed", task_type="noop")
    await pipe.execute()
    # A finished task's hash without a TTL (written by hand or an old version): it would stay.
    await redis.hset(keys.status("stuck"), mapping={"status": "completed", "task_id": "stuck"})
    # Not a status hash, although under the same prefix: left alone.
    await redis.set(keys.status("not-a-hash"), "x")
    return keys


async def test_status_cleanup_report_counts_by_state_and_rearms_lost_ttls(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = await _seed_statuses(redis, settings)
    bind_maintenance(Maintenance(redis, keys, settings.completed_ttl_seconds))
    report = await maintenance_handlers.status_cleanup_report(
        StatusCleanupReport(scan_batch=10), _ctx(redis, keys, "status_cleanup_report")
    )
    assert report["by_state"] == {"completed": 2, "failed": 1, "queued": 3}
    assert report["scanned"] == 6 and report["without_ttl"] == 3 and report["repaired"] == 1
    assert report["expiring"] == 3 and report["expiring_within_24h"] == 0  # TTL is 48 h
    assert 0 < await redis.ttl(keys.status("stuck")) <= settings.completed_ttl_seconds
    again = await maintenance_handlers.status_cleanup_report(
        StatusCleanupReport(repair_missing_ttl=False), _ctx(redis, keys, "status_cleanup_report")
    )
    assert again["repaired"] == 0 and again["expiring"] == 3


async def test_dead_letter_age_report(settings: Settings, redis: aioredis.Redis) -> None:
    keys = Keyspace(settings.prefix)
    bind_maintenance(Maintenance(redis, keys, settings.completed_ttl_seconds))
    ctx = _ctx(redis, keys, "dead_letter_age_report")
    empty = await maintenance_handlers.dead_letter_age_report(DeadLetterAgeReport(), ctx)
    assert empty["total"] == 0 and empty["oldest_age_seconds"] is None
    now_ms = int(time.time() * 1000)
    reasons = ["malformed"] * 3 + ["max_retries_exceeded"] * 2 + ["unknown_task_type"]
    for i, reason in enumerate(reasons):
        fields: dict[Any, Any] = {"task_type": "noop" if i % 2 else "ghost", "dlq_reason": reason}
        # ids an hour old for the first, a minute old for the last
        await redis.xadd(keys.dead_letters, fields, id=f"{now_ms - 3_600_000 + i * 10_000}-0")
    await redis.xadd(keys.dead_letters, {"task_type": "noop", "dlq_reason": "malformed"})
    report = await maintenance_handlers.dead_letter_age_report(
        DeadLetterAgeReport(max_entries=5), ctx
    )
    assert report["total"] == 7 and report["examined"] == 5
    assert report["by_reason"] == {"malformed": 3, "max_retries_exceeded": 2}
    assert 3500 < report["oldest_age_seconds"] < 3700 and report["newest_age_seconds"] < 60
    full = await maintenance_handlers.dead_letter_age_report(DeadLetterAgeReport(), ctx)
    assert full["examined"] == 7 and sum(full["by_reason"].values()) == 7
    assert full["by_task_type"] == {"ghost": 3, "noop": 4}


async def test_worker_runs_the_scheduled_maintenance_tasks(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = await _seed_statuses(redis, settings)
    producer = Producer.from_settings(settings, redis=redis)
    ids = [
        await producer.publish("status_cleanup_report", {}, priority="low"),
        await producer.publish("dead_letter_age_report", {}, priority="low"),
    ]
    store = StatusStore(keys, settings.completed_ttl_seconds)

    async def finished() -> bool:
        states = [await store.read(redis, i) for i in ids]
        return all(s is not None and s.status == "completed" for s in states)

    async with running_worker(settings, default_registry):
        await wait_for(finished)
    assert await redis.ttl(keys.status("stuck")) > 0  # the handler reached Redis via its context


def test_default_schedules_are_valid_and_the_daily_report_waits_for_its_handler() -> None:
    left_out: list[str] = []
    schedules = {
        s.name: s for s in load_schedules(Settings(), default_registry, warn=left_out.append)
    }
    assert schedules["status_cleanup_report"].priority == "low"
    assert schedules["dead_letter_age_report"].cron == "45 * * * *"
    if "report_generation" in default_registry:
        assert schedules["daily_report"].task_type == "report_generation"
    else:
        assert left_out == ["daily_report"] and "daily_report" not in schedules
