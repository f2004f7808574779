"""Dead-letter tooling against the real redis-server: entries are dead-lettered for real by a
running worker, then listed, shown, replayed (and run again), purged and capped."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from streamworker import PermanentError, Producer, Registry, Settings, TaskContext
from streamworker.broker import connect
from streamworker.cli import _register, app
from streamworker.deadletters import DeadLetters, InvalidDeadLetterId
from streamworker.keyspace import Keyspace
from streamworker.settings import ConfigError
from streamworker.status import StatusStore
from tests.conftest import ROOT, running_worker, wait_for, worker_env, xlen_is

pytestmark = pytest.mark.anyio


class Failing:
    """Handlers whose failures can be fixed, so a replayed task then completes."""

    def __init__(self) -> None:
        self.fixed = False
        self.completed: list[tuple[str, int]] = []  # (task_id, attempt)
        self.registry = Registry()

        @self.registry.handler("boom")
        async def boom(payload: dict[str, Any], ctx: TaskContext) -> None:
            if not self.fixed:
                raise PermanentError("downstream refused")
            self.completed.append((ctx.task_id, ctx.attempt))

        @self.registry.handler("fine")
        async def fine(payload: dict[str, Any], ctx: TaskContext) -> None:
            if self.fixed:
                self.completed.append((ctx.task_id, ctx.attempt))


async def dead_letter_some(
    settings: Settings, redis: aioredis.Redis, failing: Failing, *, boom: int = 3, unknown: int = 2
) -> dict[str, list[str]]:
    """Publish ``boom`` tasks that fail permanently and ``unknown`` tasks of a type no handler
    knows; run a worker until all of them are in failed_tasks."""
    producer = Producer.from_settings(settings)
    ids: dict[str, list[str]] = {"boom": [], "nope": []}
    for i in range(boom):
        ids["boom"].append(
            await producer.publish("boom", {"n": i, "patient": "p-secret"}, priority="high")
        )
    for i in range(unknown):
        ids["nope"].append(await producer.publish("nope", {"n": i}, priority="low"))
    await producer.aclose()
    dead = Keyspace(settings.prefix).dead_letters
    already = int(await redis.xlen(dead))
    async with running_worker(settings, failing.registry):
        await wait_for(lambda: xlen_is(redis, dead, already + boom + unknown))
    return ids


async def _lengths(redis: aioredis.Redis, settings: Settings) -> list[int]:
    keys = Keyspace(settings.prefix)
    return [int(await redis.xlen(f.stream)) for f in keys.families] + [
        int(await redis.xlen(keys.dead_letters))
    ]


def service(settings: Settings, redis: aioredis.Redis, **kwargs: Any) -> DeadLetters:
    keys = Keyspace(settings.prefix)
    status = StatusStore(keys, settings.completed_ttl_seconds)
    return DeadLetters(redis, keys, settings.group, status=status, **kwargs)


async def test_list_filter_page_and_show(settings: Settings, redis: aioredis.Redis) -> None:
    ids = await dead_letter_some(settings, redis, Failing())
    dlq = service(settings, redis)
    assert await dlq.size() == 5

    page = await dlq.list()
    assert len(page.entries) == 5 and page.total == 5 and page.next_cursor is None
    assert [e.id for e in page.entries] == sorted((e.id for e in page.entries), reverse=True)
    by_type = {e.task_type: e for e in page.entries}
    boom, nope = by_type["boom"], by_type["nope"]
    assert boom.reason == "permanent_failure" and "PermanentError" in (boom.error or "")
    assert boom.priority == "high" and boom.source_stream == f"{settings.prefix}high_priority_tasks"
    assert boom.deliveries == 1 and boom.consumer == settings.consumer
    assert boom.retry_count == 0  # a first publish writes no retry_count: absent is 0
    assert boom.failed_at and boom.source_id and boom.age_seconds >= 0
    assert nope.reason == "unknown_task_type" and nope.priority == "low"
    assert not hasattr(boom, "payload")  # listing never carries payloads

    assert {e.task_id for e in (await dlq.list(task_type="boom")).entries} == set(ids["boom"])
    assert {e.task_id for e in (await dlq.list(reason="unknown_task_type")).entries} == set(
        ids["nope"]
    )
    assert (await dlq.list(task_type="boom", reason="unknown_task_type")).entries == []

    # paging by cursor: every entry once, newest first, across pages of 2
    seen: list[str] = []
    cursor = None
    while True:
        part = await dlq.list(limit=2, after=cursor)
        seen += [e.id for e in part.entries]
        cursor = part.next_cursor
        if cursor is None:
            break
    assert seen == [e.id for e in page.entries]
    # filter and paging together
    first = await dlq.list(task_type="boom", limit=2)
    rest = await dlq.list(task_type="boom", limit=2, after=first.next_cursor)
    assert len(first.entries) == 2 and len(rest.entries) == 1

    detail = await dlq.get(boom.id)
    assert detail is not None and detail.id == boom.id and detail.task_type == "boom"
    assert json.loads(detail.payload or "")["patient"] == "p-secret"  # show is the one place
    assert "dlq_reason" not in detail.fields and detail.fields["task_type"] == "boom"
    assert await dlq.get("1-0") is None
    with pytest.raises(InvalidDeadLetterId, match="not a dead-letter id"):
        await dlq.get("nonsense")
    with pytest.raises(InvalidDeadLetterId):
        await dlq.list(after="1-x")
    with pytest.raises(ValueError, match="limit"):
        await dlq.list(limit=0)
    # the service closes only a client it opened itself
    shared = DeadLetters.from_settings(settings, redis)
    await shared.aclose()
    assert await redis.ping()


async def test_replay_by_id_runs_again_and_completes(
    settings: Settings, redis: aioredis.Redis
) -> None:
    failing = Failing()
    ids = await dead_letter_some(settings, redis, failing, boom=2, unknown=0)
    dlq = service(settings, redis)
    target = (await dlq.list(task_type="boom")).entries[-1]

    summary = await dlq.replay(ids=[target.id])
    assert (summary.matched, summary.replayed, summary.failed, summary.skipped) == (1, 1, 0, 0)
    new_id = summary.items[0].new_id
    assert new_id and await dlq.get(target.id) is None and await dlq.size() == 1

    stream = f"{settings.prefix}high_priority_tasks"
    (entry_id, raw), *_ = await redis.xrange(stream)
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    assert entry_id.decode() == new_id
    assert fields["replayed_from"] == target.id and fields["retry_count"] == "0"
    assert fields["task_id"] == target.task_id and fields["task_type"] == "boom"
    assert json.loads(fields["payload"])["patient"] == "p-secret"  # the payload, unchanged
    assert not {"dlq_reason", "dlq_error", "source_stream", "source_id", "consumer"} & set(fields)
    status = await dlq.status.read(redis, target.task_id or "")
    assert status is not None and status.status == "queued" and status.completed_at is None
    # written by the replay script itself, naming the new entry for a cancel
    row = await redis.hgetall(f"{settings.prefix}task:{target.task_id}")
    assert row[b"stream"] == stream.encode() and row[b"entry_id"] == entry_id

    failing.fixed = True
    async with running_worker(settings, failing.registry):
        await wait_for(lambda: failing.completed)
        await wait_for(lambda: _status_is(dlq, redis, target.task_id or "", "completed"))
    assert failing.completed == [(target.task_id, 1)]  # attempt 1 again: retry_count was reset
    assert target.task_id in ids["boom"]
    assert await _lengths(redis, settings) == [0, 0, 0, 0, 1]


async def _status_is(dlq: DeadLetters, redis: aioredis.Redis, task_id: str, state: str) -> bool:
    status = await dlq.status.read(redis, task_id)
    return status is not None and status.status == state


async def test_replay_by_type_reason_all_and_dry_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    failing = Failing()
    await dead_letter_some(settings, redis, failing, boom=3, unknown=2)
    dlq = service(settings, redis)
    before = await _lengths(redis, settings)
    assert before == [0, 0, 0, 0, 5]

    dry = await dlq.replay(all=True, dry_run=True)
    assert (dry.matched, dry.would_replay, dry.replayed, dry.failed) == (5, 5, 0, 0)
    assert await _lengths(redis, settings) == before  # a dry run changes nothing
    dry_type = await dlq.replay(task_type="boom", dry_run=True)
    assert dry_type.matched == dry_type.would_replay == 3

    by_reason = await dlq.replay(reason="unknown_task_type")
    assert (by_reason.matched, by_reason.replayed) == (2, 2)
    assert await _lengths(redis, settings) == [0, 0, 0, 2, 3]  # back on the low stream
    by_type = await dlq.replay(task_type="boom")
    assert (by_type.matched, by_type.replayed) == (3, 3)
    assert await _lengths(redis, settings) == [0, 3, 0, 2, 0]
    assert (await dlq.replay(all=True)).matched == 0  # nothing left: not an error

    # the replayed tasks run through a worker: boom now works, nope is dead-lettered again
    failing.fixed = True
    async with running_worker(settings, failing.registry):
        await wait_for(lambda: len(failing.completed) == 3)
        await wait_for(lambda: xlen_is(redis, dlq.keys.dead_letters, 2))
    again = (await dlq.list()).entries
    assert {e.reason for e in again} == {"unknown_task_type"}
    assert all(e.replayed_from for e in again)  # a second failure remembers the first
    assert (await dlq.replay(all=True)).replayed == 2

    with pytest.raises(ValueError, match="exactly one"):
        await dlq.replay()
    with pytest.raises(ValueError, match="exactly one"):
        await dlq.replay(all=True, task_type="boom")
    for bad_rate in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate_per_second"):
            await dlq.replay(all=True, rate_per_second=bad_rate)


async def test_replay_refuses_missing_and_unknown_source_and_changes_nothing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    await dead_letter_some(settings, redis, Failing(), boom=1, unknown=0)
    dlq = service(settings, redis)
    good = (await dlq.list()).entries[0]
    keys = dlq.keys
    # a dead letter whose source is not one of our streams (hand-written, or another prefix)
    bogus = (
        await redis.xadd(
            keys.dead_letters,
            {
                "task_type": "boom",
                "payload": "{}",
                "dlq_reason": "permanent_failure",
                "source_stream": "somebody_elses_stream",
                "source_id": "1-0",
            },
        )
    ).decode()
    orphan = (await redis.xadd(keys.dead_letters, {"task_type": "boom", "payload": "{}"})).decode()
    before = await _lengths(redis, settings)

    missing = await dlq.replay(ids=["1-0"])
    assert (missing.failed, missing.replayed, missing.items[0].detail) == (1, 0, "not_found")
    refused = await dlq.replay(ids=[bogus, orphan])
    assert refused.failed == 2 and refused.replayed == 0
    assert [i.detail for i in refused.items] == ["unknown_source_stream", "missing_source_stream"]
    assert await _lengths(redis, settings) == before
    with pytest.raises(InvalidDeadLetterId):
        await dlq.replay(ids=["bad id"])

    # The script itself refuses to write anywhere the entry did not come from: asked to replay
    # the good entry onto another priority stream, it changes nothing.
    broker = dlq._broker
    wrong = keys.family("critical")
    assert await broker.replay_dead_letters([(wrong, wrong.dead_letters, good.id)]) == [
        ("mismatch", good.source_stream or "", "")
    ]
    assert await broker.replay_dead_letters([(wrong, wrong.dead_letters, "1-0")]) == [
        ("gone", "", "")
    ]
    assert await _lengths(redis, settings) == before
    # and after Redis lost its scripts (a restart), replay loads them again
    await redis.script_flush()
    mixed = await dlq.replay(all=True)
    assert (mixed.replayed, mixed.failed) == (1, 2)
    assert await _lengths(redis, settings) == [0, 1, 0, 0, 2]


class ManualClock:
    """Stands in for time and sleep, so pacing is checked by arithmetic, not by waiting."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_replay_rate_paces_and_reports_progress(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    stream = keys.family("normal").stream
    for i in range(40):
        await redis.xadd(
            keys.dead_letters,
            {"task_type": "fine", "payload": "{}", "task_id": f"t-{i}",
             "dlq_reason": "max_retries_exceeded", "source_stream": stream},
        )  # fmt: skip
    clock = ManualClock()
    dlq = service(settings, redis, clock=clock.time, sleep=clock.sleep)
    dry = await dlq.replay(all=True, dry_run=True, rate_per_second=1)
    assert dry.would_replay == 40 and clock.slept == []  # a dry run does not wait
    seen: list[tuple[int, int]] = []
    summary = await dlq.replay(
        all=True, rate_per_second=20, progress=lambda done, total: seen.append((done, total))
    )
    assert summary.replayed == 40
    # 40 entries at 20/s: the last chunk may start 38/20 s after the first (chunks of 2)
    assert sum(clock.slept) == pytest.approx(38 / 20)
    assert len(clock.slept) == 19
    assert seen[0] == (0, 40) and seen[-1] == (40, 40)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert await redis.xlen(stream) == 40
    # without a rate: no waiting at all, whatever the size
    for _ in range(250):
        await redis.xadd(
            keys.dead_letters, {"task_type": "fine", "payload": "{}", "source_stream": stream}
        )
    clock.slept.clear()
    assert (await dlq.replay(all=True)).replayed == 250 and clock.slept == []
    # status tracking follows the replayed tasks
    status = await dlq.status.read(redis, "t-7")
    assert status is not None and status.status == "queued" and status.priority == "normal"


async def test_purge_older_than(settings: Settings, redis: aioredis.Redis) -> None:
    keys = Keyspace(settings.prefix)
    now_ms = int(time.time() * 1000)
    for age_s in (7200, 3600):  # dead-lettered two hours and one hour ago
        await redis.xadd(keys.dead_letters, {"task_type": "x"}, id=f"{now_ms - age_s * 1000}-0")
    await dead_letter_some(settings, redis, Failing(), boom=2, unknown=0)
    dlq = service(settings, redis)
    ages = sorted(e.age_seconds for e in (await dlq.list()).entries)
    assert ages[-1] == pytest.approx(7200, abs=60)
    assert await dlq.purge(older_than_seconds=5400) == 1
    assert await dlq.purge(older_than_seconds=1800) == 1
    assert await dlq.size() == 2
    assert await dlq.purge(older_than_seconds=1800) == 0
    with pytest.raises(ValueError, match="older_than_seconds"):
        await dlq.purge(older_than_seconds=-1)
    assert await dlq.purge() == 2 and await dlq.size() == 0


async def test_cap_trims_oldest_and_says_so(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    capped = settings.with_overrides(dead_letter_max_length=10)
    producer = Producer.from_settings(capped)
    first = await producer.publish("nope", {"n": 0})
    for i in range(1, 12):
        await producer.publish("nope", {"n": i})
    await producer.aclose()
    keys = Keyspace(settings.prefix)
    caplog.set_level(logging.WARNING, logger="streamworker.broker")
    async with running_worker(capped.with_overrides(worker_count=1), Registry()) as worker:
        await wait_for(lambda: worker.completed_runs == 12)
        trimmed = worker.broker.dead_letters_trimmed
    assert await redis.xlen(keys.dead_letters) == 10  # exact cap
    assert trimmed == 2
    remaining = {e.task_id for e in (await service(settings, redis).list()).entries}
    assert first not in remaining  # the oldest went first
    near = [r for r in caplog.records if r.getMessage() == "dead_letters_near_capacity"]
    assert near and near[0].size == 9 and near[0].cap == 10  # type: ignore[attr-defined]
    cut = [r for r in caplog.records if r.getMessage() == "dead_letters_trimmed"]
    assert cut and cut[0].trimmed == 1 and cut[0].cap == 10  # type: ignore[attr-defined]


def test_dead_letter_cap_setting() -> None:
    env = {"REDIS_URL": "redis://localhost:6379/0"}
    assert Settings.from_env(env).dead_letter_max_length == 100000
    assert Settings.from_env({**env, "DEAD_LETTER_MAX_LENGTH": "0"}).dead_letter_max_length == 0
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ConfigError, match="DEAD_LETTER_MAX_LENGTH"):
            Settings.from_env({**env, "DEAD_LETTER_MAX_LENGTH": bad})


# -- the dlq commands ---------------------------------------------------------------------


def test_cli_list_show_replay_purge(settings: Settings) -> None:
    async def setup() -> None:
        client = connect(settings.redis_url or "")
        try:
            await dead_letter_some(settings, client, Failing(), boom=2, unknown=1)
        finally:
            await client.aclose()

    anyio.run(setup)
    _register()
    env = worker_env(settings, COLUMNS="200")  # wide enough that no cell wraps
    runner = CliRunner()

    def cli(*args: str, **extra: str) -> Any:
        return runner.invoke(app, ["dlq", *args], env={**env, **extra})

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.stdout)
    assert len(page["entries"]) == 3 and "p-secret" not in listed.stdout
    table = cli("list", "--reason", "permanent_failure")
    assert table.exit_code == 0 and "permanent_failure" in table.stdout
    assert "2 shown of 3" in table.stdout and "cap" not in table.stdout
    nearly_full = cli("list", DEAD_LETTER_MAX_LENGTH="3")
    assert "at 3 of its cap 3" in nearly_full.stdout
    assert "unknown_task_type" not in table.stdout and "p-secret" not in table.stdout
    boom_id = next(e["id"] for e in page["entries"] if e["task_type"] == "boom")

    shown = cli("show", boom_id, "--json")
    assert shown.exit_code == 0 and json.loads(json.loads(shown.stdout)["payload"])["n"] in (0, 1)
    assert "p-secret" in cli("show", boom_id).stdout  # show is where a developer sees payloads
    assert cli("show", "1-0").exit_code == 1
    bad = cli("show", "not-an-id")
    assert bad.exit_code == 2 and "not a dead-letter id" in bad.stderr

    dry = cli("replay", "--all", "--dry-run")
    assert dry.exit_code == 0 and "would replay 3, would fail 0" in dry.stdout
    one = cli("replay", "--id", boom_id)
    assert one.exit_code == 0 and "replayed 1, failed 0" in one.stdout
    gone = cli("replay", "--id", boom_id)
    assert gone.exit_code == 1 and "no such dead letter" in gone.stderr
    typed = cli("replay", "--task-type", "nope", "--rate", "50", "--json")
    assert typed.exit_code == 0 and json.loads(typed.stdout)["replayed"] == 1

    assert cli("replay").exit_code == 2  # no selector
    assert cli("replay", "--all", "--reason", "malformed").exit_code == 2
    assert cli("replay", "--all", "--rate", "-3").exit_code == 2
    assert cli("replay", "--all", "--rate", "inf").exit_code == 2
    unknown_reason = cli("list", "--reason", "sad")
    assert unknown_reason.exit_code == 2 and "not a dead-letter reason" in unknown_reason.stderr

    async def add_unreplayable(n: int) -> None:
        client = connect(settings.redis_url or "")
        try:
            for _ in range(n):
                entry = {"task_type": "x", "dlq_reason": "malformed", "source_stream": "nowhere"}
                await client.xadd(Keyspace(settings.prefix).dead_letters, entry)
        finally:
            await client.aclose()

    anyio.run(add_unreplayable, 22)
    refused_many = cli("replay", "--reason", "malformed")
    assert refused_many.exit_code == 1 and "replayed 0, failed 22" in refused_many.stdout
    assert refused_many.stderr.count("not one of this deployment's priority streams") == 20
    assert "... and 2 more" in refused_many.stderr

    refused = cli("purge")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    purged = cli("purge", "--older-than", "3600", "--yes")
    assert purged.exit_code == 0 and "purged 0" in purged.stdout
    purged = cli("purge", "--yes")
    assert purged.exit_code == 0 and "purged 23" in purged.stdout

    unset = cli("list", REDIS_URL="")
    assert unset.exit_code == 2 and "REDIS_URL is required" in unset.stderr
    bad_cap = cli("list", DEAD_LETTER_MAX_LENGTH="lots")
    assert bad_cap.exit_code == 2 and "DEAD_LETTER_MAX_LENGTH" in bad_cap.stderr
    down = cli("list", REDIS_URL="redis://127.0.0.1:1/0")
    assert down.exit_code == 1 and "cannot reach Redis" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1


async def test_replay_killed_midway_loses_and_doubles_nothing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """kill -9 the replaying process part-way: every task is in exactly one place, and a
    second replay finishes the job."""
    keys = Keyspace(settings.prefix)
    stream = keys.family("normal").stream
    everyone = {f"t-{i}" for i in range(300)}
    pipe = redis.pipeline(transaction=False)
    for task_id in sorted(everyone):
        pipe.xadd(
            keys.dead_letters,
            {"task_type": "fine", "payload": "{}", "task_id": task_id,
             "dlq_reason": "max_retries_exceeded", "source_stream": stream},
        )  # fmt: skip
    await pipe.execute()
    replaying = subprocess.Popen(
        [sys.executable, "-m", "streamworker", "dlq", "replay", "--all", "--rate", "50"],
        env=worker_env(settings), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_for(lambda: _xlen_at_least(redis, stream, 30))
    finally:
        replaying.send_signal(signal.SIGKILL)
        replaying.wait(30)

    async def task_ids(key: str) -> list[str]:
        return [f[b"task_id"].decode() for _, f in await redis.xrange(key)]

    queued, dead = await task_ids(stream), await task_ids(keys.dead_letters)
    assert 30 <= len(queued) < 300  # really stopped part-way
    assert len(set(queued)) == len(queued) and not set(queued) & set(dead)
    assert set(queued) | set(dead) == everyone
    summary = await service(settings, redis).replay(all=True)
    assert summary.replayed == len(dead) and summary.failed == 0
    final = await task_ids(stream)
    assert len(final) == 300 and set(final) == everyone


async def _xlen_at_least(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) >= n


async def test_binary_entries_are_shown_escaped_and_replayed_byte_for_byte(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    stream = keys.family("high").stream
    raw_payload = b"\xff\xfe{not json\x00"
    entry_fields = {
        b"task_type": b"caf\xe9",
        b"payload": raw_payload,
        b"\xffodd": b"\x80",
        b"dlq_reason": b"malformed",
        b"dlq_error": b"a field is not valid UTF-8",
        b"source_stream": stream.encode(),
    }
    dead_id = (await redis.xadd(keys.dead_letters, entry_fields)).decode()
    dlq = service(settings, redis)
    (entry,) = (await dlq.list()).entries
    assert entry.task_type == "caf\\xe9" and entry.reason == "malformed"
    detail = await dlq.get(dead_id)
    assert detail is not None and detail.payload == "\\xff\\xfe{not json\x00"
    assert detail.fields["\\xffodd"] == "\\x80"
    assert (await dlq.replay(ids=[dead_id])).replayed == 1
    ((_, fields),) = await redis.xrange(stream)
    assert fields[b"payload"] == raw_payload and fields[b"task_type"] == b"caf\xe9"
    assert fields[b"\xffodd"] == b"\x80" and fields[b"replayed_from"] == dead_id.encode()
