"""Pure unit tests: wire format, backoff, keyspace, public surface."""

from __future__ import annotations

import statistics

import pytest

import streamworker
from streamworker.keyspace import Keyspace
from streamworker.wire import (
    Rejected,
    Task,
    decode_task,
    derive_task_id,
    pack_fields,
    parse_time,
    unpack_fields,
)
from streamworker.worker.backoff import backoff_delay


def decode(fields: dict[bytes, bytes], limit: int = 1024) -> Task | Rejected:
    return decode_task(
        fields,
        stream="normal_priority_tasks",
        entry_id=b"1-0",
        priority="normal",
        max_payload_bytes=limit,
    )


def test_public_names_are_pinned() -> None:
    assert sorted(streamworker.__all__) == sorted(
        [
            "PRIORITIES",
            "ConfigError",
            "Defer",
            "InvalidTask",
            "Keyspace",
            "PermanentError",
            "Producer",
            "Registry",
            "Retry",
            "RetryableError",
            "Settings",
            "StreamworkerError",
            "SyncProducer",
            "TaskContext",
            "TaskSpec",
            "Worker",
            "handler",
        ]
    )


def test_minimal_raw_entry_decodes_with_a_stable_derived_id() -> None:
    task = decode({b"task_type": b"care_alert", b"payload": b'{"a":1}'})
    assert isinstance(task, Task)
    assert task.task_id == derive_task_id("normal_priority_tasks", b"1-0")
    assert task.retry_count == 0 and task.max_retries is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"payload": b"{}"}, "malformed"),
        ({b"task_type": b"", b"payload": b"{}"}, "malformed"),
        ({b"task_type": b"x"}, "malformed"),
        ({b"task_type": b"\xff\xfe", b"payload": b"{}"}, "malformed"),
        ({b"task_type": b"x", b"payload": b"{}", b"max_retries": b"-1"}, "malformed"),
        ({b"task_type": b"x", b"payload": b"{}", b"max_retries": b"many"}, "malformed"),
        ({b"task_type": b"x", b"payload": b"{}", b"timeout_seconds": b"0"}, "malformed"),
        ({b"task_type": b"x", b"payload": b"{}", b"timeout_seconds": b"nan"}, "malformed"),
        ({b"task_type": b"x", b"payload": b"{}", b"scheduled_for": b"tomorrow"}, "malformed"),
        (
            {b"task_type": b"x", b"payload": b"{}", b"scheduled_for": b"2025-01-01T00:00:00"},
            "malformed",
        ),
        ({b"task_type": b"x", b"payload": b"{}", b"retry_count": b"-3"}, "malformed"),
        ({b"task_type": b"x", b"payload": b"x" * 2000}, "too_large"),
    ],
)
def test_bad_envelopes_are_rejected_with_their_reason(
    fields: dict[bytes, bytes], reason: str
) -> None:
    result = decode(fields)
    assert isinstance(result, Rejected)
    assert result.reason == reason
    assert "x" * 50 not in result.error  # never the payload


def test_times_need_a_zone() -> None:
    assert parse_time("2025-09-01T14:00:00Z") == 1756735200.0
    with pytest.raises(ValueError, match="time zone"):
        parse_time("2025-09-01T14:00:00")


def test_parked_fields_round_trip() -> None:
    fields = {
        b"task_type": b"care_alert",
        b"payload": '{"x":"é"}'.encode(),
        b"bin": b"\xff" * 70000,
    }
    fields.update({f"f{i}".encode(): b"v" * i for i in range(40)})
    assert unpack_fields(pack_fields(fields)) == fields


def test_full_jitter_stays_under_a_doubling_ceiling() -> None:
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 300.0), (100, 300.0)]:
        samples = [backoff_delay(failures, base=1, cap=300) for _ in range(2000)]
        assert min(samples) >= 0 and max(samples) <= ceiling
        # uniform on [0, ceiling]: the mean is near ceiling/2
        assert statistics.mean(samples) == pytest.approx(ceiling / 2, rel=0.1)


def test_equal_jitter_never_shrinks() -> None:
    previous_max = 0.0
    for failures in range(1, 8):
        samples = [backoff_delay(failures, base=1, cap=300, jitter="equal") for _ in range(500)]
        assert min(samples) >= previous_max
        previous_max = max(samples)


def test_every_key_carries_the_prefix() -> None:
    keys = Keyspace("app1:")
    names = [f.stream for f in keys.families] + [f.delayed for f in keys.families]
    names += [keys.dead_letters, keys.status("t"), keys.idempotency("k"), keys.notification_outbox]
    assert all(n.startswith("app1:") for n in names)
    assert [f.stream for f in keys.families] == [
        "app1:critical_priority_tasks",
        "app1:high_priority_tasks",
        "app1:normal_priority_tasks",
        "app1:low_priority_tasks",
    ]
    assert keys.dead_letters == "app1:failed_tasks"
