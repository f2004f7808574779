"""Email through a real aiosmtpd server: headers, reminders, the done-once guard, the
NOTIFICATION_ENABLED switch, and an SMTP outage behind the circuit breaker."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

import handlers  # noqa: F401  (registers the domain handlers)
from streamworker import Producer, Settings
from streamworker.channels.smtp_sink import SmtpSink, free_port
from streamworker.keyspace import Keyspace
from streamworker.registry import default_registry
from streamworker.status import StatusStore
from tests.conftest import running_worker, status_is, wait_for

pytestmark = pytest.mark.anyio


def mail_settings(settings: Settings, port: int, **extra: object) -> Settings:
    return settings.with_overrides(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_from="care@clinic.example",
        recipient_email_domain="patients.example",
        **extra,
    )


async def status_of(redis: aioredis.Redis, settings: Settings, task_id: str) -> dict[str, str]:
    raw = await redis.hgetall(Keyspace(settings.prefix).status(task_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_send_email_arrives_with_the_right_headers(
    settings: Settings, redis: aioredis.Redis
) -> None:
    with SmtpSink() as sink:
        s = mail_settings(settings, sink.port)
        producer = Producer.from_settings(s, contracts=default_registry.contracts)
        async with running_worker(s, default_registry):
            task_id = await producer.publish(
                "send_email",
                {"to": "nurse@clinic.example", "subject": "Shift plan", "body": "See you at 8."},
            )
            await wait_for(lambda: len(sink.messages) == 1)
            await wait_for(lambda: status_is(redis, s, task_id, "completed"), timeout=10)
        await producer.aclose()
    message = sink.messages[0]
    assert message["From"] == "care@clinic.example"
    assert message["To"] == "nurse@clinic.example"
    assert message["Subject"] == "Shift plan"
    assert message["Message-ID"] == f"<{task_id}.email@clinic.example>"
    assert message["X-Streamworker-Reference"] == f"{task_id}.email"
    assert message["Date"] and message["Auto-Submitted"] == "auto-generated"
    assert message.get_content().strip() == "See you at 8."
    assert sink.envelopes[0] == ("care@clinic.example", ("nurse@clinic.example",))


async def test_reminders_and_alerts_reach_their_recipients(
    settings: Settings, redis: aioredis.Redis
) -> None:
    with SmtpSink() as sink:
        s = mail_settings(settings, sink.port)
        producer = Producer.from_settings(s, contracts=default_registry.contracts)
        async with running_worker(s, default_registry):
            user = str(uuid.uuid4())
            # the seed's submit example, field for field
            await producer.publish(
                "send_medication_reminder",
                {
                    "user_id": user,
                    "medication_name": "Lisinopril",
                    "dosage": "10mg",
                    "reminder_time": "14:00",
                },
                priority="high",
            )
            # the seed's queue example uses the other name and a message
            await producer.publish(
                "medication_reminder", {"user_id": "u-2", "message": "Take your evening dose."}
            )
            await producer.publish("care_alert", {"patient_ref": "p-1", "alert": "fall"})
            await producer.publish("wellness_check_in", {"user_id": "u-3"})
            await wait_for(lambda: len(sink.messages) == 4)
        await producer.aclose()
    by_to = {m["To"]: m for m in sink.messages}
    reminder = by_to[f"{user}@patients.example"]
    assert reminder["Subject"] == "Medication reminder"
    assert "Lisinopril 10mg at 14:00" in reminder.get_content()
    assert "evening dose" in by_to["u-2@patients.example"].get_content()
    assert by_to["on_call@patients.example"]["Subject"] == "Care alert (high): fall"
    assert by_to["u-3@patients.example"]["Subject"] == "Wellness check-in"


async def test_a_redelivered_task_does_not_send_again(
    settings: Settings, redis: aioredis.Redis
) -> None:
    with SmtpSink() as sink:
        s = mail_settings(settings, sink.port)
        producer = Producer.from_settings(s, contracts=default_registry.contracts)
        task_id = str(uuid.uuid4())
        payload = {"to": "a@clinic.example", "subject": "Once", "body": "only once"}
        async with running_worker(s, default_registry):
            await producer.publish("send_email", payload, task_id=task_id)
            await wait_for(lambda: len(sink.messages) == 1)
            await wait_for(lambda: status_is(redis, s, task_id, "completed"))
            # the same task delivered again (a replay, a reclaim after a crash)
            await producer.publish("send_email", payload, task_id=task_id)
            await producer.publish("send_email", payload)  # a different task does send
            await wait_for(lambda: len(sink.messages) == 2)
            await wait_for(lambda: _backlog_empty(redis, s))
        await producer.aclose()
    assert len(sink.messages) == 2
    assert (
        REGISTRY.get_sample_value(
            "notification_deliveries_total", {"channel": "email", "outcome": "duplicate_skipped"}
        )
        or 0
    ) >= 1


async def test_notifications_disabled_complete_as_skipped(
    settings: Settings, redis: aioredis.Redis
) -> None:
    before = (
        REGISTRY.get_sample_value("notifications_skipped_total", {"task_type": "care_alert"}) or 0
    )
    with SmtpSink() as sink:
        s = mail_settings(settings, sink.port, notification_enabled=False)
        producer = Producer.from_settings(s, contracts=default_registry.contracts)
        async with running_worker(s, default_registry):
            task_id = await producer.publish("care_alert", {"patient_ref": "p-9", "alert": "fall"})
            await wait_for(lambda: status_is(redis, s, task_id, "completed"))
        await producer.aclose()
        assert sink.messages == []
    status = await status_of(redis, s, task_id)
    assert status["outcome"] == "skipped"
    assert status["last_error"].startswith("skipped: notifications disabled")
    shown = await StatusStore(Keyspace(s.prefix), s.completed_ttl_seconds).read(redis, task_id)
    assert (
        shown is not None and shown.status == "completed" and "skipped" in (shown.last_error or "")
    )
    after = REGISTRY.get_sample_value("notifications_skipped_total", {"task_type": "care_alert"})
    assert after == before + 1


async def test_email_without_smtp_host_is_dead_lettered_naming_the_variable(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, contracts=default_registry.contracts)
    async with running_worker(settings, default_registry):
        task_id = await producer.publish(
            "send_email", {"to": "x@clinic.example", "subject": "s", "body": "b"}
        )
        await wait_for(lambda: status_is(redis, settings, task_id, "failed"))
    await producer.aclose()
    entries = await redis.xrange(Keyspace(settings.prefix).dead_letters)
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields["dlq_reason"] == "permanent_failure"
    assert "SMTP_HOST" in fields["dlq_error"]


async def test_smtp_outage_opens_the_breaker_defers_and_recovers(
    settings: Settings, redis: aioredis.Redis
) -> None:
    port = free_port()  # nothing listens yet: the SMTP server is down
    s = mail_settings(
        settings,
        port,
        breaker_failure_threshold=3,
        breaker_cooldown_seconds=0.5,
        http_timeout_seconds=2,
        max_retries=10,
        retry_base_seconds=0.2,
    )
    keys = Keyspace(s.prefix)
    sink = SmtpSink(port)
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    total = 30
    try:
        async with running_worker(s, default_registry):
            ids = [
                await producer.publish(
                    "send_email",
                    {"to": f"n{i}@clinic.example", "subject": f"msg {i}", "body": "x"},
                )
                for i in range(total)
            ]
            await wait_for(lambda: _breaker_state(redis, keys, "open"), timeout=20)
            # while it is open the tasks wait in the delayed set, their retries untouched
            await wait_for(lambda: _some_scheduled(redis, s, ids), timeout=10)
            sink.start()  # the SMTP server is back
            await wait_for(lambda: len(sink.messages) >= total, timeout=40)
            await wait_for(lambda: _all_status(redis, s, ids, "completed"), timeout=20)
            assert not await _breaker_state(redis, keys, "open")  # closed again
        statuses = [await status_of(redis, s, i) for i in ids]
    finally:
        sink.stop()
        await producer.aclose()
    subjects = [m["Subject"] for m in sink.messages]
    assert sorted(subjects) == sorted(f"msg {i}" for i in range(total))  # none lost, none twice
    assert await redis.xlen(keys.dead_letters) == 0
    # Only the calls in flight when it opened and the failed probes used a retry (how many
    # depends on the machine's pace); without the breaker every task would have.
    retried = sum(1 for st in statuses if int(st.get("retry_count", "0")) > 0)
    print(f"\nSMTP outage: {retried} of {total} tasks used a retry, the rest were deferred")
    assert retried <= total // 2
    opened = REGISTRY.get_sample_value(
        "circuit_breaker_transitions_total", {"channel": "email", "to_state": "open"}
    )
    assert opened is not None and opened >= 1


async def _all_status(redis: aioredis.Redis, s: Settings, ids: list[str], state: str) -> bool:
    for task_id in ids:
        if not await status_is(redis, s, task_id, state):
            return False
    return True


async def _some_scheduled(redis: aioredis.Redis, s: Settings, ids: list[str]) -> bool:
    for task_id in ids:
        if await status_is(redis, s, task_id, "scheduled"):
            return True
    return False


async def _breaker_state(redis: aioredis.Redis, keys: Keyspace, state: str) -> bool:
    raw = await redis.hget(keys.breaker("email"), "state")
    return raw is not None and raw.decode() == state


async def _backlog_empty(redis: aioredis.Redis, s: Settings) -> bool:
    keys = Keyspace(s.prefix)
    for family in keys.families:
        if await redis.xlen(family.stream) or await redis.zcard(family.delayed):
            return False
    return True


async def test_without_any_channel_configured_notices_wait_in_the_outbox(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, contracts=default_registry.contracts)
    async with running_worker(settings, default_registry):
        task_id = await producer.publish(
            "send_medication_reminder",
            {"user_id": "u-5", "medication_name": "Lisinopril", "dosage": "10mg",
             "reminder_time": "14:00"},
        )  # fmt: skip
        await wait_for(lambda: status_is(redis, settings, task_id, "completed"))
    await producer.aclose()
    entries = await redis.xrange(Keyspace(settings.prefix).notification_outbox)
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    # references only: no medication, no text
    assert fields == {"kind": "medication_reminder", "task_id": task_id, "recipient": "u-5"}
