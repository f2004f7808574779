"""The batched publish path: one script call per priority, status in one call, cheap ids and
times that keep the exact formats of the slower code they replaced."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from streamworker import Settings
from streamworker.errors import InvalidTask
from streamworker.keyspace import Keyspace
from streamworker.producer import Producer, TaskSpec
from streamworker.status import StatusStore
from streamworker.wire import format_time, new_task_ids

pytestmark = pytest.mark.anyio


def test_new_task_ids_are_distinct_version_4_uuids() -> None:
    ids = new_task_ids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_format_time_matches_isoformat(ts: float) -> None:
    expected = (
        datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    got = format_time(ts)
    # The float product can land a millisecond apart from datetime's own rounding; never more.
    assert got[:-5] == expected[:-5] or abs(int(got[-4:-1]) - int(expected[-4:-1])) in (1, 999)
    assert len(got) == len(expected) == 24


async def test_batch_lands_every_entry_exactly_with_its_status(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, redis=redis)
    keys = Keyspace(settings.prefix)
    specs = [
        TaskSpec(
            task_type="note",
            payload={"n": i, "text": "ünïcødé ✓"},
            priority=("high", "normal", "low")[i % 3],
            max_retries=2 if i % 2 else None,
            correlation_id=f"c-{i}" if i % 5 == 0 else None,
        )
        for i in range(300)
    ]
    ids = await producer.publish_many(specs)
    assert len(set(ids)) == 300
    by_id: dict[str, dict[bytes, bytes]] = {}
    for priority in ("high", "normal", "low"):
        for _, fields in await redis.xrange(keys.family(priority).stream):
            # The stream is the priority; retry_count absent is 0 (CONTRACT.md §2).
            assert b"priority" not in fields and b"retry_count" not in fields
            first = await producer.status.read(redis, fields[b"task_id"].decode())
            assert first is not None and first.priority == priority
            by_id[fields[b"task_id"].decode()] = fields
    assert set(by_id) == set(ids)
    for i, task_id in enumerate(ids):
        fields = by_id[task_id]
        assert fields[b"payload"].decode() == f'{{"n":{i},"text":"ünïcødé ✓"}}'
        assert (fields.get(b"max_retries") == b"2") == bool(i % 2)
        assert (b"correlation_id" in fields) == (i % 5 == 0)
        status = await producer.status.read(redis, task_id)
        assert status is not None
        assert status.status == "queued"
        assert status.task_type == "note"
        assert status.created_at == fields[b"created_at"].decode()
        assert await redis.ttl(keys.status(task_id)) == -1


async def test_a_known_id_republished_loses_its_old_expiry(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, redis=redis)
    key = Keyspace(settings.prefix).status("fixed-id")
    old_run = {"retry_count": "2", "started_at": "s", "completed_at": "c", "last_error": "e"}
    await redis.hset(key, mapping={"status": "completed", **old_run})
    await redis.expire(key, 100)
    await producer.publish_many([TaskSpec(task_type="note", payload={}, task_id="fixed-id")])
    assert await redis.ttl(key) == -1
    assert await redis.hget(key, "status") == b"queued"
    assert await redis.hmget(key, list(old_run)) == [None] * 4  # the old run's are gone


async def test_status_off_writes_no_hash(settings: Settings, redis: aioredis.Redis) -> None:
    keys = Keyspace(settings.prefix)
    producer = Producer(redis, keys=keys, status=StatusStore(keys, 60, enabled=False))
    [task_id] = await producer.publish_many([TaskSpec(task_type="note", payload={})])
    assert await redis.exists(keys.status(task_id)) == 0
    assert await redis.xlen(keys.family("normal").stream) == 1


async def test_one_bad_task_refuses_the_whole_batch(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, redis=redis)
    keys = Keyspace(settings.prefix)
    good = TaskSpec(task_type="note", payload={"ok": True})
    with pytest.raises(InvalidTask, match="UTF-8"):
        await producer.publish_many([good, TaskSpec(task_type="note", payload=b'{"a":"\xff"}')])
    with pytest.raises(InvalidTask, match="unknown priority"):
        await producer.publish_many([good, TaskSpec(task_type="note", payload={}, priority="x")])
    with pytest.raises(InvalidTask, match="non-empty name"):
        await producer.publish_many([good, TaskSpec(task_type="a b", payload={})])
    assert await redis.xlen(keys.family("normal").stream) == 0


async def test_write_many_leaves_what_write_leaves(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    store = StatusStore(keys, 300)
    writes: list[tuple[str, str, dict[str, str | int | None]]] = [
        ("a", "running", {"task_type": "note", "retry_count": 2, "last_error": None}),
        ("b", "completed", {"completed_at": "2026-01-01T00:00:00.000Z"}),
        ("c", "failed", {"last_error": "boom", "retry_count": 3}),
    ]
    one = redis.pipeline(transaction=False)
    for task_id, state, fields in writes:
        # Each task's hash as its first write left it (a completion does not repeat task_id).
        await redis.hset(keys.status(task_id), mapping={"old": "1", "task_id": task_id})
        await redis.expire(keys.status(task_id), 50)
        store.write(one, "w-" + task_id, state, **fields)
    await one.execute()
    many = redis.pipeline(transaction=False)
    store.write_many(many, writes)
    await many.execute()
    for task_id, state, _ in writes:
        via_many = await redis.hgetall(keys.status(task_id))
        via_write = await redis.hgetall(keys.status("w-" + task_id))
        via_many.pop(b"old")
        assert via_many[b"task_id"] == task_id.encode()
        via_many[b"task_id"] = ("w-" + task_id).encode()
        assert via_many == via_write
        ttl = await redis.ttl(keys.status(task_id))
        assert (ttl == -1) if state == "running" else (250 < ttl <= 300)


async def test_a_big_batch_goes_in_chunks_in_order(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # Over _CHUNK tasks: sent a chunk at a time on one connection (send_in_order). Entries
    # keep the batch's order per stream, parked tasks go to the delayed set, and every task
    # has its first status.
    producer = Producer.from_settings(settings, redis=redis)
    keys = Keyspace(settings.prefix)
    specs = [
        TaskSpec(
            task_type="note",
            payload={"n": i},
            priority=("high", "normal")[i % 2],
            delay=3600 if i % 7 == 0 else None,
        )
        for i in range(1001)
    ]
    ids = await producer.publish_many(specs)
    for priority, rest in (("high", 1), ("normal", 0)):
        entries = await redis.xrange(keys.family(priority).stream)
        expected = [ids[i] for i in range(1001) if i % 2 != rest and i % 7 != 0]
        assert [f[b"task_id"].decode() for _, f in entries] == expected
        assert await redis.zcard(keys.family(priority).delayed) == sum(
            1 for i in range(1001) if i % 2 != rest and i % 7 == 0
        )
    states = [await producer.status.read(redis, task_id) for task_id in ids]
    assert [s.status if s else None for s in states] == [
        "scheduled" if i % 7 == 0 else "queued" for i in range(1001)
    ]


async def test_a_big_batch_with_an_error_reply_raises_and_the_connection_goes_on(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, redis=redis)
    keys = Keyspace(settings.prefix)
    await redis.set(keys.family("low").stream, "not a stream")  # XADD there: WRONGTYPE
    specs = [TaskSpec(task_type="note", payload={}, priority="low") for _ in range(500)]
    with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
        await producer.publish_many(specs)
    await redis.delete(keys.family("low").stream)
    assert len(await producer.publish_many(specs)) == 500
    assert await redis.xlen(keys.family("low").stream) == 500


async def test_a_big_batch_is_sent_again_after_a_dropped_connection(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings)  # its own client and pool
    keys = Keyspace(settings.prefix)
    await producer.publish_many([TaskSpec(task_type="note", payload={})])  # a kept connection
    await redis.client_kill_filter(skipme=True)  # drops it (and every other but this one)
    specs = [TaskSpec(task_type="note", payload={"n": i}) for i in range(500)]
    calls = 0
    send = producer._broker._send_in_order
    pool = producer._broker.redis.connection_pool
    get_connection = pool.get_connection

    async def dropped_once_taken(*args: Any, **kwargs: Any) -> Any:
        # Should the first attempt take a connection from the pool instead: dropped by the
        # server after the pool's own checks passed (newer redis-py versions check a pooled
        # connection as it is taken, and would reconnect).
        conn = await get_connection(*args, **kwargs)
        if calls == 1:
            await redis.client_kill_filter(skipme=True)  # every connection but this one
        return conn

    async def counted(*args: Any) -> list[Any]:
        nonlocal calls
        calls += 1
        return await send(*args)

    producer._broker._send_in_order = counted  # type: ignore[method-assign]
    pool.get_connection = dropped_once_taken  # type: ignore[method-assign]
    ids = await producer.publish_many(specs)
    assert calls == 2  # the first attempt failed on the dropped connection
    entries = await redis.xrange(keys.family("normal").stream)
    # The first connection never got a command through: the resend is the only copy.
    assert [f[b"task_id"].decode() for _, f in entries][1:] == ids
    await producer.aclose()


class _Reorder:
    """A producer hook that rebuilds an entry's fields in reverse order."""

    def before_publish(self, task_type: str, stream: str, fields: MutableMapping[str, Any]) -> None:
        items = list(fields.items())
        fields.clear()
        fields.update(reversed(items))

    def after_publish(self, token: Any, task_id: str, error: BaseException | None) -> None:
        return None


@pytest.mark.parametrize("reorder", [False, True], ids=["as built", "rebuilt by a hook"])
async def test_the_first_status_holds_the_fields_the_contract_shows(
    settings: Settings, redis: aioredis.Redis, reorder: bool
) -> None:
    # On a single Redis the publish script writes the first status from the entry's own
    # fields (by position as the producer builds them, else by name): the row the cluster
    # path writes from the publisher's copy, without task_id and retry_count (the key names
    # the task, absent is 0), plus the entry's place.
    producer = Producer(
        redis, keys=Keyspace(settings.prefix), hooks=[_Reorder()] if reorder else []
    )
    keys = Keyspace(settings.prefix)
    past = "2026-01-01T00:00:00.000Z"
    specs = [
        TaskSpec(task_type="note", payload={}, priority="high", correlation_id="c-1"),
        TaskSpec(task_type="note", payload={}, scheduled_for=past, max_retries=1),
    ]
    ids = await producer.publish_many(specs)
    entries = {
        fields[b"task_id"].decode(): (keys.family(priority).stream, entry_id, fields)
        for priority in ("high", "normal")
        for entry_id, fields in await redis.xrange(keys.family(priority).stream)
    }
    for task_id, spec in zip(ids, specs, strict=True):
        stream, entry_id, fields = entries[task_id]
        expected = {
            "status": "queued",
            "task_type": "note",
            "priority": spec.priority,
            "created_at": fields[b"created_at"].decode(),
            # where its entry is, for a cancel to delete it while it is unread
            "stream": stream,
            "entry_id": entry_id.decode(),
        }
        if spec.scheduled_for:
            expected["scheduled_for"] = past
        row = await redis.hgetall(keys.status(task_id))
        assert {k.decode(): v.decode() for k, v in row.items()} == expected
        # no task_id (the key names it) and no retry_count (absent is 0): both still shown
        status = await producer.status.read(redis, task_id)
        assert status is not None and (status.task_id, status.retry_count) == (task_id, 0)
