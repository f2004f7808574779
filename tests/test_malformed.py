"""Bad input at the door (CONTRACT.md §3, §4): a corpus of malformed entries written with raw
XADD, bypassing the producer, plus random field maps from hypothesis.

Every entry that can never succeed lands in ``failed_tasks`` at once with its reason and all
provenance fields; the worker logs one line per entry, never the payload, and keeps going.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streamworker import Producer, Registry, Settings, TaskContext
from streamworker.keyspace import PRIORITIES, Keyspace
from streamworker.observability.logging import JsonFormatter
from streamworker.wire import MAX_FIELDS, parse_time
from tests.conftest import running_worker, wait_for

pytestmark = pytest.mark.anyio

#: Stands in for patient data: it is in every payload and must never reach a log line or a
#: dead-letter error text.
MARK = "PHI-7f3a-Jane-Doe"
MAX_PAYLOAD = 16384

PROVENANCE = ("dlq_error", "source_stream", "source_id", "group", "consumer", "deliveries")


class Referral(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    patient_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    urgency: Literal["routine", "urgent"]
    visits: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _ok(**extra: bytes) -> dict[bytes, bytes]:
    fields = {b"task_type": b"ok", b"payload": _json({"note": MARK})}
    fields.update({k.encode(): v for k, v in extra.items()})
    return fields


def _referral(payload: bytes) -> dict[bytes, bytes]:
    return {b"task_type": b"referral", b"payload": payload}


GOOD_REFERRAL = {"patient_ref": "p-1", "urgency": "routine"}

#: (case name, raw fields, expected dlq_reason)
CORPUS: list[tuple[str, dict[bytes, bytes], str]] = [
    ("no task_type", {b"payload": _json({"note": MARK})}, "malformed"),
    ("empty task_type", {b"task_type": b"", b"payload": _json({"note": MARK})}, "malformed"),
    ("only unknown fields", {b"hello": MARK.encode()}, "malformed"),
    ("task_type spelt Task_Type", {b"Task_Type": b"ok", b"payload": b"{}"}, "malformed"),
    ("task_type with a trailing space in the name", {b"task_type ": b"ok", b"payload": b"{}"},
     "malformed"),
    ("payload missing", {b"task_type": b"ok", b"note": MARK.encode()}, "malformed"),
    ("payload empty", {b"task_type": b"ok", b"payload": b""}, "malformed"),
    ("payload not JSON", {b"task_type": b"ok", b"payload": f"note={MARK}".encode()}, "malformed"),
    ("payload truncated JSON", {b"task_type": b"ok", b"payload": f'{{"n":"{MARK}'.encode()},
     "malformed"),
    ("payload a JSON list", {b"task_type": b"ok", b"payload": _json([MARK])}, "malformed"),
    ("payload a JSON string", {b"task_type": b"ok", b"payload": _json(MARK)}, "malformed"),
    ("payload a JSON number", {b"task_type": b"ok", b"payload": b"42"}, "malformed"),
    ("payload JSON null", {b"task_type": b"ok", b"payload": b"null"}, "malformed"),
    ("payload JSON true", {b"task_type": b"ok", b"payload": b"true"}, "malformed"),
    ("payload invalid UTF-8", {b"task_type": b"ok",
     b"payload": b'{"note":"' + MARK.encode() + b'\xff\xfe"}'}, "malformed"),
    ("payload nested 3000 deep", {b"task_type": b"ok",
     b"payload": b'{"n":' + b"[" * 3000 + b"]" * 3000 + b"}"}, "malformed"),
    ("payload over MAX_PAYLOAD_BYTES", {b"task_type": b"ok",
     b"payload": _json({"note": MARK * (MAX_PAYLOAD // len(MARK) + 1)})}, "too_large"),
    ("unknown type, payload over the limit", {b"task_type": b"nope",
     b"payload": _json({"note": MARK * (MAX_PAYLOAD // len(MARK) + 1)})}, "too_large"),
    ("unknown task type", {b"task_type": b"no_such_type", b"payload": _json({"n": MARK})},
     "unknown_task_type"),
    ("task type with a space", {b"task_type": b"ok now", b"payload": b"{}"},
     "unknown_task_type"),
    ("task_type not UTF-8", {b"task_type": b"ok\xff", b"payload": b"{}"}, "malformed"),
    ("contract: wrong type", _referral(_json({**GOOD_REFERRAL, "visits": MARK})),
     "contract_violation"),
    ("contract: missing required field", _referral(_json({"urgency": "urgent", "x": 1})),
     "contract_violation"),
    ("contract: below minimum", _referral(_json({**GOOD_REFERRAL, "visits": -1})),
     "contract_violation"),
    ("contract: string too long", _referral(_json({**GOOD_REFERRAL, "patient_ref": MARK * 5})),
     "contract_violation"),
    ("contract: value not in the enum", _referral(_json({**GOOD_REFERRAL, "urgency": MARK})),
     "contract_violation"),
    ("contract: unknown field", _referral(_json({**GOOD_REFERRAL, MARK: 1})),
     "contract_violation"),
    ("contract: empty object", _referral(b"{}"), "contract_violation"),
    ("contract type, payload a list", _referral(_json([GOOD_REFERRAL])), "malformed"),
    ("max_retries negative", _ok(max_retries=b"-1"), "malformed"),
    ("max_retries not an integer", _ok(max_retries=b"1.5"), "malformed"),
    ("max_retries text", _ok(max_retries=b"abc"), "malformed"),
    ("max_retries huge", _ok(max_retries=b"1" + b"0" * 30), "malformed"),
    ("max_retries 5000 digits", _ok(max_retries=b"9" * 5000), "malformed"),
    ("timeout_seconds zero", _ok(timeout_seconds=b"0"), "malformed"),
    ("timeout_seconds negative", _ok(timeout_seconds=b"-5"), "malformed"),
    ("timeout_seconds NaN", _ok(timeout_seconds=b"NaN"), "malformed"),
    ("timeout_seconds infinite", _ok(timeout_seconds=b"inf"), "malformed"),
    ("timeout_seconds text", _ok(timeout_seconds=b"abc"), "malformed"),
    ("scheduled_for words", _ok(scheduled_for=b"tomorrow"), "malformed"),
    ("scheduled_for without a zone", _ok(scheduled_for=b"2025-09-01T12:00:00"), "malformed"),
    ("scheduled_for impossible date", _ok(scheduled_for=b"2025-13-45T99:00:00Z"), "malformed"),
    ("retry_count negative", _ok(retry_count=b"-2"), "malformed"),
    ("task_id not UTF-8", _ok(task_id=b"\xc3\x28"), "malformed"),
    ("correlation_id not UTF-8", _ok(correlation_id=b"\xff"), "malformed"),
    ("created_at not UTF-8", _ok(created_at=b"\x80abc"), "malformed"),
    ("non-UTF-8 field name, no payload", {b"task_type": b"ok", b"\xff\xfename": b"\x00\x01"},
     "malformed"),
    ("many fields", {**_ok(), **{f"f{i}".encode(): b"x" for i in range(MAX_FIELDS + 500)}},
     "malformed"),
]  # fmt: skip

#: Odd but valid: these must run, not be dead-lettered.
VALID_ODDITIES: list[tuple[str, dict[bytes, bytes]]] = [
    ("non-UTF-8 unknown field", {**_ok(), b"\xff\xfe": b"\x00\xff"}),
    ("empty optional fields", _ok(max_retries=b"", timeout_seconds=b"", scheduled_for=b"")),
    ("scheduled_for in the past", _ok(scheduled_for=b"2020-01-01T00:00:00+02:00")),
    ("contract at its limits", _referral(_json({**GOOD_REFERRAL, "visits": 100}))),
    ("unicode payload", {b"task_type": b"ok", b"payload": _json({"note": "ü ✓ 日本"})}),
]


def _flat(fields: Mapping[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    for key, value in fields.items():
        out += [key, value]
    return out


def _registry(ran: list[str]) -> Registry:
    registry = Registry()

    @registry.handler("ok")
    async def ok(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    @registry.handler("referral", contract=Referral)
    async def referral(payload: Referral, ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    return registry


Source = tuple[bytes, bytes]  # (stream, entry id): ids of different streams can be equal


async def _dead_letters(redis: aioredis.Redis, keys: Keyspace) -> dict[Source, dict[bytes, bytes]]:
    """Dead-letter entries by their source stream and entry id."""
    entries = await redis.xrange(keys.dead_letters)
    return {(f[b"source_stream"], f[b"source_id"]): f for _, f in entries}


async def _nothing_left(redis: aioredis.Redis, keys: Keyspace, group: str) -> bool:
    for priority in PRIORITIES:
        family = keys.family(priority)
        pending = await redis.xpending(family.stream, group)
        if pending["pending"] or await redis.xlen(family.stream):
            return False
    return True


def _log_text(records: list[logging.LogRecord]) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(r) for r in records)


async def test_malformed_corpus_is_dead_lettered_with_reasons_and_worker_keeps_going(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(CORPUS) >= 30
    settings = settings.with_overrides(max_payload_bytes=MAX_PAYLOAD)
    keys = Keyspace(settings.prefix)
    ran: list[str] = []
    registry = _registry(ran)
    caplog.set_level(logging.INFO)

    expected: dict[Source, tuple[str, str, dict[bytes, bytes], str]] = {}
    valid_ids: list[bytes] = []
    async with running_worker(settings, registry) as worker:
        for i, (name, fields, reason) in enumerate(CORPUS):
            stream = keys.family(PRIORITIES[i % len(PRIORITIES)]).stream
            entry_id = await redis.execute_command("XADD", stream, "*", *_flat(fields))
            expected[(stream.encode(), entry_id)] = (name, stream, fields, reason)
        for _name, fields in VALID_ODDITIES:
            stream = keys.family("normal").stream
            valid_ids.append(await redis.execute_command("XADD", stream, "*", *_flat(fields)))

        async def all_settled() -> bool:
            return len(await _dead_letters(redis, keys)) == len(CORPUS) and len(ran) == len(
                VALID_ODDITIES
            )

        try:
            await wait_for(all_settled, timeout=60)
        except TimeoutError:
            dead = await _dead_letters(redis, keys)
            missing = [v[0] for k, v in expected.items() if k not in dead]
            groups = [await redis.xinfo_groups(keys.family(p).stream) for p in PRIORITIES]
            pytest.fail(
                f"not dead-lettered: {missing}; ran {len(ran)}; read {worker.reader.read_count},"
                f" in flight {worker.in_flight}, free slots {worker.slots.free}; groups {groups}"
            )
        # Still healthy: a valid task published after the corpus completes.
        producer = Producer.from_settings(settings, contracts=registry.contracts)
        after = await producer.publish("referral", GOOD_REFERRAL, priority="high")
        await wait_for(lambda: after in ran)
        await wait_for(lambda: _nothing_left(redis, keys, settings.group))
        await producer.aclose()

    dead = await _dead_letters(redis, keys)
    wrong = {
        expected[eid][0]: dead[eid][b"dlq_reason"].decode()
        for eid in expected
        if dead[eid][b"dlq_reason"].decode() != expected[eid][3]
    }
    assert wrong == {}, f"mis-classified: {wrong}"
    for source, (name, stream, fields, _reason) in expected.items():
        letter = dead[source]
        for field in PROVENANCE:
            assert letter.get(field.encode()), f"{name}: no {field}"
        assert letter[b"source_stream"] == stream.encode(), name
        assert letter[b"group"] == settings.group.encode(), name
        assert letter[b"consumer"] == settings.consumer.encode(), name
        assert letter[b"deliveries"] == b"1", name
        parse_time(letter[b"failed_at"].decode())
        assert MARK.encode() not in letter[b"dlq_error"], f"{name}: payload in dlq_error"
        if len(fields) <= MAX_FIELDS:  # the original entry is kept, byte for byte
            assert {k: letter[k] for k in fields} == fields, name
        else:
            assert int(letter[b"dlq_fields_dropped"]) > 0
            assert letter[b"task_type"] == b"ok"
    assert len(ran) == len(VALID_ODDITIES) + 1

    records = [r for r in caplog.records if r.name.startswith("streamworker")]
    per_event = Counter(r.getMessage() for r in records if r.levelno >= logging.WARNING)
    assert per_event == {"task_dead_lettered": len(CORPUS)}, per_event
    assert MARK not in _log_text(caplog.records), "payload text reached the logs"
    assert MARK[:8] not in caplog.text


# -- random input ------------------------------------------------------------------------------

_KNOWN_NAMES = [
    b"task_type", b"payload", b"task_id", b"timeout_seconds", b"scheduled_for", b"retry_count",
    b"correlation_id", b"priority", b"created_at",
]  # fmt: skip
_VALUES = [b"ok", b"referral", b"{}", _json(GOOD_REFERRAL), b"[]", b"null", b"1", b"-1", b""]
_field_maps = st.dictionaries(
    st.sampled_from(_KNOWN_NAMES) | st.binary(max_size=16),
    st.sampled_from(_VALUES) | st.binary(max_size=48) | st.text(max_size=24).map(str.encode),
    min_size=1,
    max_size=10,
)


def _random_field_maps(count: int) -> list[dict[bytes, bytes]]:
    """``count`` field maps drawn by hypothesis (run once, fed to one worker)."""
    drawn: list[dict[bytes, bytes]] = []

    @hsettings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_field_maps)
    def draw(fields: dict[bytes, bytes]) -> None:
        drawn.append(fields)

    draw()
    return drawn


async def test_random_field_maps_never_get_stuck(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keyspace(settings.prefix)
    ran: list[str] = []
    registry = _registry(ran)
    caplog.set_level(logging.INFO)
    maps = _random_field_maps(80)
    stream = keys.family("normal").stream
    async with running_worker(settings, registry):
        for fields in maps:
            await redis.execute_command("XADD", stream, "*", *_flat(fields))

        async def accounted() -> bool:
            # every entry either ran, was dead-lettered, or was parked (a future scheduled_for)
            dead = await redis.xlen(keys.dead_letters)
            parked = await redis.zcard(keys.family("normal").delayed)
            return dead + len(ran) + parked == len(maps)

        await wait_for(accounted, timeout=60)
        await wait_for(lambda: _nothing_left(redis, keys, settings.group))
    dead = await _dead_letters(redis, keys)
    reasons = Counter(f[b"dlq_reason"].decode() for f in dead.values())
    assert set(reasons) <= {"malformed", "too_large", "unknown_task_type", "contract_violation"}
    for letter in dead.values():
        assert all(letter.get(f.encode()) for f in PROVENANCE)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    print(f"random field maps: {len(maps)}, dead-lettered {dict(reasons)}, ran {len(ran)}")
