"""Recurring tasks: exactly-once occurrences across scheduler replicas, leader takeover after
kill -9, misfire policies (manual clock and end to end), DST, validation, and the CLI."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from streamworker import ConfigError, Registry, Settings, TaskContext
from streamworker.broker import connect
from streamworker.embedded import EmbeddedRedis
from streamworker.keyspace import Keyspace
from streamworker.scheduler import (
    Schedule,
    ScheduleError,
    Scheduler,
    load_schedules,
    next_after,
    occurrence_key,
    plan_due,
    validate_schedule,
)
from streamworker.scheduler.occurrences import occurrences_between
from streamworker.scheduler.ticker import LeaseLost
from tests.conftest import ROOT, wait_for, worker_env

pytestmark = pytest.mark.anyio

DAY = 86400


class ManualClock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def _registry() -> Registry:
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
        return None

    return registry


async def _published(redis: aioredis.Redis, keys: Keyspace) -> list[dict[str, str]]:
    """Every entry on the priority streams, and parked in the delayed sets, as text."""
    out = []
    for family in keys.families:
        for _, fields in await redis.xrange(family.stream):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


def _occurrences(entries: list[dict[str, str]], name: str) -> Counter[int]:
    prefix = f"schedule:{name}:"
    return Counter(
        int(e["idempotency_key"][len(prefix) :])
        for e in entries
        if e.get("idempotency_key", "").startswith(prefix)
    )


# -- cron arithmetic and DST (no Redis) ------------------------------------------------------


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def test_spring_forward_fixed_time_runs_once_right_after_the_jump() -> None:
    # Europe/Berlin skips 02:00-03:00 on 2026-03-29: a 02:30 job runs at 03:00 CEST (01:00Z).
    daily = Schedule(name="d", cron="30 2 * * *", task_type="noop", timezone="Europe/Berlin")
    assert next_after(daily, _ts("2026-03-28T12:00:00+00:00")) == _ts("2026-03-29T01:00:00+00:00")
    assert next_after(daily, _ts("2026-03-29T01:00:00+00:00")) == _ts("2026-03-30T00:30:00+00:00")
    # An every-30-minutes job follows elapsed time: nothing in the skipped local hour.
    half = Schedule(name="h", cron="*/30 * * * *", task_type="noop", timezone="Europe/Berlin")
    got = occurrences_between(
        half, _ts("2026-03-29T00:10:00+00:00"), _ts("2026-03-29T01:40:00+00:00"), 10
    )
    assert got == [_ts(f"2026-03-29T{t}:00+00:00") for t in ("00:30", "01:00", "01:30")]


def test_fall_back_fixed_time_runs_once_and_interval_jobs_run_in_both_passes() -> None:
    # Europe/Berlin repeats 02:00-03:00 on 2026-10-25 (00:00Z-01:00Z is CEST, 01:00Z-02:00Z CET).
    daily = Schedule(name="d", cron="30 2 * * *", task_type="noop", timezone="Europe/Berlin")
    day = occurrences_between(
        daily, _ts("2026-10-24T12:00:00+00:00"), _ts("2026-10-26T12:00:00+00:00"), 10
    )
    assert day == [_ts("2026-10-25T00:30:00+00:00"), _ts("2026-10-26T01:30:00+00:00")]
    # Evaluated from inside the second pass, the first 02:30 is not fired again.
    assert next_after(daily, _ts("2026-10-25T01:10:00+00:00")) == _ts("2026-10-26T01:30:00+00:00")
    plan = plan_due(daily, _ts("2026-10-25T00:31:00+00:00"), _ts("2026-10-25T01:45:00+00:00"), 60)
    assert plan.fire == [] and plan.skipped == 0
    half = Schedule(name="h", cron="*/30 * * * *", task_type="noop", timezone="Europe/Berlin")
    both = occurrences_between(
        half, _ts("2026-10-24T23:50:00+00:00"), _ts("2026-10-25T02:00:00+00:00"), 10
    )
    assert len(both) == 5 and len(set(both)) == 5  # 02:00, 02:30 CEST, 02:00, 02:30 CET, 03:00


def test_misfire_plans() -> None:
    minute = {"name": "m", "cron": "* * * * *", "task_type": "noop"}
    t0 = _ts("2026-01-01T00:00:00+00:00")
    skip = plan_due(Schedule(**minute), t0, t0 + 600, 60)
    assert skip.fire == [t0 + 600] and skip.skipped == 9
    once = plan_due(Schedule(**minute, misfire="run_once"), t0, t0 + 600, 60)
    assert once.fire == [t0 + 540, t0 + 600] and once.skipped == 8
    bounded = plan_due(Schedule(**minute, misfire="run_all", max_catch_up=5), t0, t0 + 600, 60)
    assert bounded.fire == [t0 + 60 * i for i in range(5, 11)] and bounded.skipped == 4
    # A per-second schedule after a day down: counting stops at the limit, catch-up is bounded.
    second = Schedule(name="s", cron="* * * * * *", task_type="noop", misfire="run_all")
    huge = plan_due(second, t0, t0 + DAY, 60)
    assert huge.skipped_at_least and huge.caught_up == 100
    assert huge.fire[:100] == list(range(t0 + DAY - 60 - 99, t0 + DAY - 60 + 1))
    assert len(huge.fire) == 160


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "cron '61 * * * *' is invalid"),
        ({"cron": "* * *"}, "must have 5 fields"),
        ({"cron": "0 0 30 2 *"}, "'0 0 30 2 *' is invalid"),
        ({"task_type": "nope"}, "unknown task type 'nope'"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"priority": "urgent"}, "priority 'urgent' is not one of"),
        ({"name": "has space"}, "name must be"),
        ({"task_type": "typed", "payload": {"count": "x"}}, "does not match the typed contract"),
    ],
)
def test_bad_schedule_is_refused_naming_it(fields: dict[str, Any], message: str) -> None:
    import msgspec

    class Typed(msgspec.Struct):
        count: int

    registry = _registry()

    @registry.handler("typed", contract=Typed)
    async def typed(payload: Typed, ctx: TaskContext) -> None:
        return None

    raw = {"name": "nightly", "cron": "0 2 * * *", "task_type": "noop", **fields}
    with pytest.raises(ScheduleError) as err:
        validate_schedule(Schedule(**raw), registry)
    assert message in str(err.value) and repr(raw["name"]) in str(err.value)


def test_schedules_file_and_code_declarations(tmp_path: Path) -> None:
    registry = _registry()

    @registry.handler("report", schedule="0 9 * * *")
    async def report(payload: dict[str, Any], ctx: TaskContext) -> None:
        return None

    registry.add_schedule("missing_handler", {"cron": "0 1 * * *", "optional": True})
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "schedules:\n"
        "  - name: report\n"
        "    enabled: false\n"
        "  - name: ping\n"
        "    cron: '*/5 * * * * *'\n"
        "    task_type: noop\n"
        "    payload: {a: 1}\n"
        "    priority: low\n"
        "    timezone: Europe/Berlin\n"
        "    misfire: run_once\n"
        "    description: five-second ping\n"
    )
    settings = Settings(schedules_file=str(path))
    left_out: list[str] = []
    found = {s.name: s for s in load_schedules(settings, registry, warn=left_out.append)}
    assert left_out == ["missing_handler"]
    assert found["report"].cron == "0 9 * * *" and found["report"].enabled is False
    assert found["ping"].payload == {"a": 1} and found["ping"].has_seconds
    path.write_text("schedules:\n  - name: typo\n    cron: '0 1 * * *'\n    taks_type: noop\n")
    with pytest.raises(ScheduleError, match=r"'typo' in .*schedules.yaml: .*taks_type"):
        load_schedules(settings, registry)
    path.write_text("schedules: [\n")
    with pytest.raises(Exception, match="SCHEDULES_FILE is not valid YAML"):
        load_schedules(settings, registry)
    with pytest.raises(Exception, match="SCHEDULES_FILE cannot be read"):
        load_schedules(Settings(schedules_file=str(tmp_path / "absent.yaml")), registry)


# -- the loop, with a manual clock -------------------------------------------------------------


async def test_misfire_policies_after_an_outage_with_a_manual_clock(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = _registry()
    base = {"cron": "* * * * *", "task_type": "noop"}
    schedules = [
        Schedule(name="skip", **base),
        Schedule(name="once", misfire="run_once", **base),
        Schedule(name="all5", misfire="run_all", max_catch_up=5, **base),
        Schedule(name="off", enabled=False, **base),
    ]
    t0 = (int(time.time()) // 60) * 60 - 2 * DAY  # in the past: entries go straight to streams
    clock = ManualClock(t0 + 0.5)
    keys = Keyspace(settings.prefix)
    skipped_before = _metric("scheduler_misfires_skipped_total", schedule="skip")
    fired_before = _metric("scheduler_fires_total", schedule="all5")
    scheduler = Scheduler(settings, schedules, registry=registry, redis=redis, clock=clock)
    assert await scheduler.lease.try_acquire()
    await scheduler.tick()  # first sight: cursors start at t0, nothing back-filled
    for step in (60.2, 120.2):  # on time: each minute fires once
        clock.t = t0 + step
        await scheduler.tick()
    fired = await _published(redis, keys)
    assert all(
        _occurrences(fired, n) == Counter({t0 + 60: 1, t0 + 120: 1}) for n in ("skip", "once")
    )
    clock.t = t0 + 120 + 600.7  # ten minutes with no scheduler
    await scheduler.tick()
    await scheduler.tick()  # the same time again: nothing new
    fired = await _published(redis, keys)
    after = t0 + 120
    assert set(_occurrences(fired, "skip")) - {t0 + 60, t0 + 120} == {after + 600}
    assert set(_occurrences(fired, "once")) - {t0 + 60, t0 + 120} == {after + 540, after + 600}
    assert set(_occurrences(fired, "all5")) - {t0 + 60, t0 + 120} == {
        after + 60 * i for i in range(5, 11)
    }
    assert not _occurrences(fired, "off")
    assert _metric("scheduler_misfires_skipped_total", schedule="skip") - skipped_before == 9
    assert _metric("scheduler_fires_total", schedule="all5") - fired_before == 2 + 6
    assert all(v == 1 for n in ("skip", "once", "all5") for v in _occurrences(fired, n).values())
    await scheduler.lease.release()

    # A replacement scheduler continues from the state in Redis without firing anything again.
    replacement = Scheduler(settings, schedules, registry=registry, redis=redis, clock=clock)
    assert await replacement.lease.try_acquire()
    assert replacement.lease.token > scheduler.lease.token or scheduler.lease.token == 0
    await replacement.tick()
    assert len(await _published(redis, keys)) == len(fired)
    clock.t += 60
    await replacement.tick()
    assert len(await _published(redis, keys)) == len(fired) + 3
    states = await replacement.state.read_all()
    assert states["skip"].last_fire == (int(clock.t) // 60) * 60
    assert states["off"].cursor == int(clock.t) and states["off"].last_fire is None
    await replacement.lease.release()

    # Enabling "off" (a run_all schedule) later: the time it was off is not caught up on.
    enabled = Schedule(name="off", misfire="run_all", **base)
    later = Scheduler(settings, [enabled], registry=registry, redis=redis, clock=clock)
    assert await later.lease.try_acquire()
    cursor = int(clock.t)
    clock.t = cursor - cursor % 60 + 60.5
    await later.tick()
    assert _occurrences(await _published(redis, keys), "off") == Counter({int(clock.t): 1})
    await later.lease.release()


async def test_occurrence_published_before_a_crash_is_not_published_again(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # A leader published an occurrence and died before recording it: its successor reaches
    # the same occurrence, and publish_once finds its key, so it is enqueued once.
    registry = _registry()
    schedules = [Schedule(name="m", cron="* * * * *", task_type="noop")]
    t0 = (int(time.time()) // 60) * 60 - DAY
    clock = ManualClock(t0)
    successor = Scheduler(settings, schedules, registry=registry, redis=redis, clock=clock)
    assert await successor.lease.try_acquire()
    await successor.tick()
    first = await successor.producer.publish(
        "noop", {}, idempotency_key=occurrence_key("m", t0 + 60)
    )
    clock.t = t0 + 60.5
    await successor.tick()
    entries = await _published(redis, Keyspace(settings.prefix))
    assert _occurrences(entries, "m") == Counter({t0 + 60: 1}) and successor.published == 0
    state = await successor.state.read("m")
    assert state.last_fire == t0 + 60 and state.last_task == first


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_grace_shorter_than_a_takeover_is_refused(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="SCHEDULER_MISFIRE_GRACE_SECONDS must be at least"):
        Scheduler(
            settings.with_overrides(scheduler_lease_seconds=30, scheduler_misfire_grace_seconds=45),
            [],
        )


async def test_old_leader_cannot_write_state_after_losing_the_lease(
    settings: Settings, redis: aioredis.Redis
) -> None:
    registry = _registry()
    schedules = [Schedule(name="m", cron="* * * * *", task_type="noop")]
    t0 = (int(time.time()) // 60) * 60 - DAY
    clock = ManualClock(t0)
    old = Scheduler(
        settings.with_overrides(scheduler_lease_seconds=0.2),
        schedules,
        registry=registry,
        redis=redis,
        clock=clock,
    )
    assert await old.lease.try_acquire()
    await old.tick()
    await wait_for(
        lambda: _gone(redis, Keyspace(settings.prefix).scheduler_leader), timeout=10
    )  # the lease expires (the old leader "paused")
    new = Scheduler(settings, schedules, registry=registry, redis=redis, clock=clock)
    assert await new.lease.try_acquire() and new.lease.token > old.lease.token
    clock.t = t0 + 60
    with pytest.raises(LeaseLost):
        await old.tick()  # its publish is deduplicated, its state write refused
    await new.tick()
    entries = await _published(redis, Keyspace(settings.prefix))
    assert _occurrences(entries, "m") == Counter({t0 + 60: 1})
    assert not await old.lease.try_acquire()


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


# -- real processes ---------------------------------------------------------------------------


@pytest.fixture
def schedules_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "schedules.yaml"


def _scheduler_process(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamworker", "scheduler"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


async def test_three_schedulers_publish_each_occurrence_once_and_survive_kill_9(
    settings: Settings, redis: aioredis.Redis, schedules_file: Path
) -> None:
    schedules_file.write_text(
        "schedules:\n"
        "  - name: every_second\n"
        "    cron: '* * * * * *'\n"
        "    task_type: noop\n"
        "    priority: low\n"
    )
    keys = Keyspace(settings.prefix)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {}
    try:
        for i in range(3):
            name = f"sched{i}"
            logs[name] = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
            env = worker_env(
                settings,
                SCHEDULES_FILE=str(schedules_file),
                SCHEDULER_LEASE_SECONDS="2",
                STREAMWORKER_CONSUMER=name,
                LOG_LEVEL="info",
            )
            procs[name] = _scheduler_process(env, logs[name])

        async def low_length() -> int:
            return int(await redis.xlen(keys.family("low").stream))

        await wait_for(lambda: _at_least(low_length, 4), timeout=60)
        holder = (await redis.get(keys.scheduler_leader)).decode()
        leader = holder.split(":")[1]
        procs[leader].kill()  # kill -9: the lease is not released, it has to expire
        killed_at = time.monotonic()
        procs[leader].wait(10)

        async def new_leader() -> bool:
            value = await redis.get(keys.scheduler_leader)
            return value is not None and value.decode().split(":")[1] != leader

        await wait_for(new_leader, timeout=30, interval=0.05)
        takeover = time.monotonic() - killed_at
        length_at_takeover = await low_length()
        await wait_for(lambda: _at_least(low_length, length_at_takeover + 4), timeout=60)
        for name, proc in procs.items():
            if name != leader:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            if name != leader:
                assert proc.wait(30) == 0, _text(logs[name])
        assert not await redis.exists(keys.scheduler_leader)  # released on SIGTERM
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for log in logs.values():
            log.close()

    entries = await _published(redis, keys)
    seen = _occurrences(entries, "every_second")
    duplicates = sum(count - 1 for count in seen.values())
    span = range(min(seen), max(seen) + 1)
    lost = [t for t in span if t not in seen]
    idempotency_keys = [k async for k in redis.scan_iter(match=f"{settings.prefix}idempotency:*")]
    print(
        f"\nscheduler takeover after kill -9: {takeover:.2f}s (lease 2s); "
        f"occurrences {len(seen)}, duplicates {duplicates}, lost {len(lost)}"
    )
    assert duplicates == 0 and lost == []
    assert len(entries) == len(seen) == len(idempotency_keys)
    assert takeover < 10  # generous: the lease is 2 s and followers retry every ~0.7 s


async def _at_least(read: Any, n: int) -> bool:
    return bool(await read() >= n)


def _text(log: Any) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace"))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamworker", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_misfire_policies_end_to_end_after_a_restart(
    settings: Settings, redis: aioredis.Redis, schedules_file: Path
) -> None:
    schedules_file.write_text(
        "schedules:\n"
        + "".join(
            f"  - {{name: {name}, cron: '0 0 * * *', task_type: noop, misfire: {policy}"
            f"{', max_catch_up: 3' if policy == 'run_all' else ''}}}\n"
            for name, policy in (("skip", "skip"), ("once", "run_once"), ("all3", "run_all"))
        )
    )
    keys = Keyspace(settings.prefix)
    midnight = (int(time.time()) // DAY) * DAY
    # The last scheduler stopped five days ago (at 01:00): five midnights were missed.
    for name in ("skip", "once", "all3"):
        await redis.hset(keys.scheduler_state, f"{name}:cursor", midnight - 5 * DAY + 3600)
    env = worker_env(settings, SCHEDULES_FILE=str(schedules_file), SCHEDULER_LEASE_SECONDS="2")

    async def settled() -> bool:
        state = await redis.hgetall(keys.scheduler_state)
        return all(
            int(state.get(f"{n}:cursor".encode(), 0)) > midnight for n in ("skip", "once", "all3")
        )

    for _run in range(2):  # the second run (a restart) must publish nothing more
        with tempfile.TemporaryFile() as log:
            proc = _scheduler_process(env, log)
            try:
                await wait_for(settled, timeout=60)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, _text(log)
        entries = await _published(redis, keys)
        assert set(_occurrences(entries, "skip")) == set()
        assert set(_occurrences(entries, "once")) == {midnight}
        assert set(_occurrences(entries, "all3")) == {midnight - 2 * DAY, midnight - DAY, midnight}
        assert len(entries) == 4
        await redis.hset(keys.scheduler_state, "skip:cursor", midnight - 5 * DAY + 3600)


async def test_cli_list_pause_resume_run_and_bad_config(
    settings: Settings, redis: aioredis.Redis, schedules_file: Path
) -> None:
    schedules_file.write_text(
        "schedules:\n"
        "  - {name: hourly, cron: '0 * * * *', task_type: noop, description: every hour}\n"
        "  - {name: berlin, cron: '30 2 * * *', task_type: record, timezone: Europe/Berlin}\n"
    )
    keys = Keyspace(settings.prefix)
    env = worker_env(settings, SCHEDULES_FILE=str(schedules_file))
    assert _cli(env, "schedules", "pause", "hourly").returncode == 0
    assert await redis.hget(keys.scheduler_state, "hourly:paused") == b"1"
    listed = _cli(env, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    views = {v["name"]: v for v in json.loads(listed.stdout)["schedules"]}
    assert views["hourly"]["paused"] and views["hourly"]["next_fire"] is None
    assert views["berlin"]["next_fire"] and views["berlin"]["timezone"] == "Europe/Berlin"
    assert _cli(env, "schedules", "resume", "hourly").returncode == 0
    assert not await redis.hexists(keys.scheduler_state, "hourly:paused")
    ran = _cli(env, "schedules", "run", "hourly")
    assert ran.returncode == 0, ran.stderr
    entries = await _published(redis, keys)
    assert [(e["task_id"], e["task_type"]) for e in entries] == [(ran.stdout.strip(), "noop")]
    table = _cli(env, "schedules", "list")
    assert table.returncode == 0 and "hourly" in table.stdout and "active" in table.stdout
    unknown = _cli(env, "schedules", "pause", "nope")
    assert unknown.returncode == 1 and "no schedule named 'nope'" in unknown.stderr
    down = _cli({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "schedules", "list")
    assert down.returncode == 1 and down.stderr.strip().splitlines() == [
        "error: cannot reach Redis at redis://127.0.0.1:1/0: ConnectionError"
    ]

    for command, bad, message in (
        (("scheduler",), "{name: broken, cron: '0 25 * * *', task_type: noop}", "'broken'"),
        (("schedules", "list"), "{name: x, cron: '0 1 * * *', task_type: ghost}", "unknown task"),
        (("scheduler",), "{name: tz, cron: '0 1 * * *', task_type: noop, timezone: X/Y}", "zone"),
    ):
        schedules_file.write_text(f"schedules:\n  - {bad}\n")
        result = _cli(env, *command)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert message in lines[0] and "SCHEDULES_FILE" in lines[0]


async def test_scheduler_without_redis_keeps_trying_serves_metrics_and_stops_cleanly(
    settings: Settings, schedules_file: Path
) -> None:
    schedules_file.write_text(
        "schedules:\n  - {name: hourly, cron: '0 * * * *', task_type: noop}\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = worker_env(
        settings,
        REDIS_URL="redis://127.0.0.1:1/0",  # nothing listens there
        SCHEDULES_FILE=str(schedules_file),
        METRICS_PORT=str(port),
        LOG_LEVEL="info",
    )
    with tempfile.TemporaryFile() as log:
        proc = _scheduler_process(env, log)
        try:

            async def unavailable_logged() -> bool:
                return "scheduler_redis_unavailable" in _text(log)

            await wait_for(unavailable_logged, timeout=60)
            async with httpx.AsyncClient(timeout=10) as client:
                scraped = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert scraped.status_code == 200 and "scheduler_leader 0.0" in scraped.text
            assert proc.poll() is None  # still running, retrying
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, _text(log)


async def test_scheduler_rides_out_a_redis_restart_without_losing_or_doubling(
    settings: Settings, schedules_file: Path
) -> None:
    schedules_file.write_text(
        "schedules:\n  - {name: every_second, cron: '* * * * * *', task_type: noop}\n"
    )
    private = EmbeddedRedis(appendonly=True, appendfsync="always").start()
    client = connect(private.url)
    keys = Keyspace(settings.prefix)
    try:
        own = settings.with_overrides(redis_url=private.url)
        env = worker_env(own, SCHEDULES_FILE=str(schedules_file), SCHEDULER_LEASE_SECONDS="1")

        async def published() -> int:
            try:
                return int(await client.xlen(keys.family("normal").stream))
            except (OSError, RedisConnectionError):
                return 0

        with tempfile.TemporaryFile() as log:
            proc = _scheduler_process(env, log)
            try:
                await wait_for(lambda: _at_least(published, 3), timeout=60)
                private.kill()  # SIGKILL: the scheduler's connection and scripts are gone
                await anyio.sleep(1.5)
                private.start()  # same port, same append-only file
                before = await published()
                await wait_for(lambda: _at_least(published, before + 3), timeout=60)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, _text(log)
        seen = _occurrences(await _published(client, keys), "every_second")
        assert all(count == 1 for count in seen.values())
        assert sorted(seen) == list(range(min(seen), max(seen) + 1))  # the outage caught up
    finally:
        await client.aclose()
        private.close()
