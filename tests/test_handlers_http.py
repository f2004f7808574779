"""SMS gateway, Notification Service, User Service and webhooks against a real local HTTP
server: what is sent, how answers map to outcomes (500 retry, 400 dead letter, 429 +
Retry-After delayed as asked), and the webhook signature recipe."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

import handlers  # noqa: F401  (registers the domain handlers)
from streamworker import Producer, Settings
from streamworker.channels.http import parse_retry_after
from streamworker.channels.webhook import verify_signature
from streamworker.keyspace import Keyspace
from streamworker.registry import default_registry
from tests.channel_servers import Receiver, http_receiver
from tests.conftest import running_worker, status_is, wait_for
from tests.test_handlers_email import status_of

pytestmark = pytest.mark.anyio

SECRET = "whsec-test-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as r:
        yield r


def http_settings(settings: Settings, receiver: Receiver, **extra: object) -> Settings:
    values: dict[str, object] = {
        "sms_gateway_url": f"{receiver.url}/sms",
        "sms_api_key": "sms-key",
        "notification_service_url": f"{receiver.url}/notify",
        "notification_api_key": "notify-key",
        "webhook_secret": SECRET,
        "webhook_allow_private": True,  # the receiver is on 127.0.0.1
        "http_timeout_seconds": 2,
    }
    return settings.with_overrides(**{**values, **extra})


async def dead_letter_fields(redis: aioredis.Redis, s: Settings) -> list[dict[str, str]]:
    entries = await redis.xrange(Keyspace(s.prefix).dead_letters)
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]


async def test_sms_and_push_requests_carry_auth_and_idempotency_keys(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver)
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        sms_id = await producer.publish(
            "send_sms", {"to": "+4915112345678", "message": "Your appointment is at 9."}
        )
        push_id = await producer.publish(
            "wellness_check_in", {"user_id": "u-7", "channels": ["push"]}
        )
        await wait_for(lambda: receiver.on("/sms") and receiver.on("/notify/api/v1/notifications"))
        await wait_for(lambda: status_is(redis, s, push_id, "completed"))
    await producer.aclose()
    sms = receiver.on("/sms")[0]
    assert sms.headers["Authorization"] == "Bearer sms-key"
    assert sms.headers["Idempotency-Key"] == f"{sms_id}.sms"
    assert sms.json() == {
        "to": "+4915112345678",
        "message": "Your appointment is at 9.",
        "reference": f"{sms_id}.sms",
    }
    push = receiver.on("/notify/api/v1/notifications")[0]
    assert push.headers["Authorization"] == "Bearer notify-key"
    body = push.json()
    assert body["recipient_ref"] == "u-7" and body["kind"] == "wellness_check_in"
    assert body["reference"] == f"{push_id}.push"


async def test_user_service_preferences_choose_the_channels(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver, user_service_url=f"{receiver.url}/users")
    receiver.documents["/users/api/v1/users/u-1/contact-preferences"] = {
        "channels": ["sms", "push"],
        "phone": "+4915100000001",
    }
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        ok = await producer.publish(
            "send_medication_reminder",
            {"user_id": "u-1", "medication_name": "Metformin", "dosage": "500mg",
             "reminder_time": "08:00"},
        )  # fmt: skip
        unknown = await producer.publish(
            "medication_reminder", {"user_id": "nobody", "message": "hello"}
        )
        await wait_for(lambda: status_is(redis, s, ok, "completed"))
        await wait_for(lambda: status_is(redis, s, unknown, "failed"))
    await producer.aclose()
    sms = receiver.on("/sms")
    assert len(sms) == 1 and sms[0].json()["to"] == "+4915100000001"
    assert "Metformin 500mg at 08:00" in sms[0].json()["message"]
    assert len(receiver.on("/notify/api/v1/notifications")) == 1
    dead = await dead_letter_fields(redis, s)
    assert [d["dlq_reason"] for d in dead] == ["permanent_failure"]
    assert "User Service" in dead[0]["dlq_error"] and "404" in dead[0]["dlq_error"]
    assert "nobody" not in dead[0]["dlq_error"]


async def test_webhook_signature_verifies_with_the_documented_recipe(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver)
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        task_id = await producer.publish(
            "webhook",
            {"url": f"{receiver.url}/hook", "method": "POST",
             "payload": {"event": "user_created", "user_id": "123"}},
        )  # fmt: skip
        await wait_for(lambda: receiver.on("/hook"))
        await wait_for(lambda: status_is(redis, s, task_id, "completed"))
    await producer.aclose()
    request = receiver.on("/hook")[0]
    timestamp = request.headers["X-Streamworker-Timestamp"]
    signature = request.headers["X-Streamworker-Signature"]
    # The README's recipe, step by step: HMAC-SHA256(secret, timestamp + "." + raw body)
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, "sha256=" + expected)
    assert abs(time.time() - int(timestamp)) < 300
    assert verify_signature(SECRET, timestamp, request.body, signature)
    assert not verify_signature(SECRET, timestamp, request.body + b" ", signature)
    assert not verify_signature("other", timestamp, request.body, signature)
    assert not verify_signature(SECRET, str(int(timestamp) - 3600), request.body, signature)
    assert request.headers["X-Streamworker-Delivery"] == task_id
    assert json.loads(request.body) == {"event": "user_created", "user_id": "123"}


async def test_500_is_retried_400_is_dead_lettered(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver)
    receiver.answer("/flaky", (500, {}, b"{}"), (503, {}, b"{}"))
    receiver.answer("/bad", (400, {}, b'{"detail": "bad"}'))
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        flaky = await producer.publish("webhook", {"url": f"{receiver.url}/flaky"})
        bad = await producer.publish("webhook", {"url": f"{receiver.url}/bad"}, max_retries=5)
        await wait_for(lambda: status_is(redis, s, flaky, "completed"))
        await wait_for(lambda: status_is(redis, s, bad, "failed"))
    await producer.aclose()
    assert len(receiver.on("/flaky")) == 3  # 500, 503, then 200
    assert (await status_of(redis, s, flaky))["retry_count"] == "2"
    assert len(receiver.on("/bad")) == 1  # never retried
    dead = await dead_letter_fields(redis, s)
    assert len(dead) == 1 and dead[0]["dlq_reason"] == "permanent_failure"
    assert "HTTP 400" in dead[0]["dlq_error"]


async def test_429_with_retry_after_is_delayed_as_asked(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver)
    receiver.answer("/busy", (429, {"Retry-After": "2"}, b"{}"))
    receiver.answer("/sms", (429, {"Retry-After": "1"}, b"{}"))
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        hook = await producer.publish("webhook", {"url": f"{receiver.url}/busy"})
        sms = await producer.publish("send_sms", {"to": "+4915112345678", "message": "hi"})
        await wait_for(lambda: status_is(redis, s, hook, "completed"))
        await wait_for(lambda: status_is(redis, s, sms, "completed"))
    await producer.aclose()
    first, second = receiver.on("/busy")
    assert second.at - first.at >= 1.9  # not before the receiver asked (retry base is 0.05 s)
    sms_first, sms_second = receiver.on("/sms")
    assert sms_second.at - sms_first.at >= 0.9
    assert (await status_of(redis, s, hook))["retry_count"] == "1"


async def test_unreachable_gateway_is_retried_then_dead_lettered(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver, sms_gateway_url="http://127.0.0.1:9/sms")
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        task_id = await producer.publish(
            "send_sms", {"to": "+4915112345678", "message": "hi"}, max_retries=1
        )
        await wait_for(lambda: status_is(redis, s, task_id, "failed"))
    await producer.aclose()
    dead = await dead_letter_fields(redis, s)
    assert dead[0]["dlq_reason"] == "max_retries_exceeded"
    assert "SMS gateway unreachable" in dead[0]["dlq_error"]


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("999999") == 3600  # capped


async def test_a_bad_phone_number_is_a_contract_violation(
    settings: Settings, redis: aioredis.Redis, receiver: Receiver
) -> None:
    s = http_settings(settings, receiver)
    stream = Keyspace(s.prefix).family("normal").stream
    task_id = str(uuid.uuid4())
    await redis.xadd(
        stream,
        {"task_type": "send_sms", "task_id": task_id,
         "payload": json.dumps({"to": "12345", "message": "x"})},
    )  # fmt: skip
    async with running_worker(s, default_registry):
        await wait_for(lambda: status_is(redis, s, task_id, "failed"))
    dead = await dead_letter_fields(redis, s)
    assert dead[0]["dlq_reason"] == "contract_violation" and "$.to" in dead[0]["dlq_error"]
    assert receiver.requests == []
