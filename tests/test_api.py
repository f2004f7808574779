"""The HTTP API over real HTTP (uvicorn on a loopback port) and a real redis-server."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any, get_args

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from streamworker import Settings, TaskContext
from streamworker.api.estimate import RUN_ALLOWANCE_SECONDS, BacklogSampler
from streamworker.api.routes.deadletters import Reason
from streamworker.embedded import EmbeddedRedis
from streamworker.keyspace import Keyspace
from streamworker.wire import DLQ_REASONS, parse_time
from tests.api_helpers import (
    OTHER_TOKEN,
    TOKEN,
    api_registry,
    api_settings,
    loopback_socket,
    serving_api,
)
from tests.conftest import ROOT, running_worker, wait_for, worker_env

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The seed's examples (§APIs), byte for byte.
SEED_SUBMIT = """{
  "task_type": "send_medication_reminder",
  "priority": "high",
  "scheduled_for": "2025-09-01T14:00:00Z",
  "payload": {
    "user_id": "123e4567-e89b-12d3-a456-426614174000",
    "medication_name": "Lisinopril",
    "dosage": "10mg",
    "reminder_time": "14:00"
  },
  "max_retries": 3,
  "timeout_seconds": 30
}"""
SEED_TEST_TASK = """{
    "task_type": "test_notification",
    "priority": "normal",
    "payload": {"message": "Test notification"}
  }"""


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving_api(api_settings(settings)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client,
    ):
        yield client


async def submit(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return await client.post("/api/v1/tasks/submit", json=body, **kw)


async def status_of(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tasks/{task_id}/status")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def test_seed_curl_examples_work_with_a_bearer_token(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    headers = {"Content-Type": "application/json", **AUTH}
    first = await api.post("/api/v1/tasks/submit", content=SEED_SUBMIT, headers=headers)
    assert first.status_code == 202, first.text
    doc = first.json()
    assert set(doc) == {"task_id", "status", "scheduled_for", "estimated_completion"}
    # 2025-09-01 is in the past: due now, so queued at once on the high stream.
    assert doc["status"] == "queued"
    assert doc["scheduled_for"] == "2025-09-01T14:00:00.000Z"
    assert parse_time(doc["estimated_completion"]) >= time.time() - 5
    second = await api.post("/api/v1/tasks/submit", content=SEED_TEST_TASK, headers=headers)
    assert second.status_code == 202, second.text
    assert second.json()["status"] == "queued" and second.json()["scheduled_for"] is None
    keys = Keyspace(settings.prefix)
    assert await redis.xlen(keys.family("high").stream) == 1
    assert await redis.xlen(keys.family("normal").stream) == 1

    shown = await status_of(api, doc["task_id"])
    assert shown["status"] == "queued" and shown["task_type"] == "send_medication_reminder"
    assert shown["priority"] == "high" and "payload" not in shown
    assert set(shown) == {
        "task_id", "task_type", "status", "priority", "created_at", "scheduled_for",
        "started_at", "completed_at", "retry_count", "last_error",
    }  # fmt: skip
    async with running_worker(settings, api_registry()):
        for task_id in (doc["task_id"], second.json()["task_id"]):

            async def done(task_id: str = task_id) -> bool:
                return (await status_of(api, task_id))["status"] == "completed"

            await wait_for(done)
    final = await status_of(api, doc["task_id"])
    assert final["started_at"] and final["completed_at"] and final["retry_count"] == 0


async def test_every_api_route_refuses_a_missing_or_wrong_token(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/schema/openapi.json")).json()
    routes = [
        (method.upper(), path.replace("{task_id}", "some-task"))
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method in item
    ]
    assert len(routes) >= 4
    wrong = [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": TOKEN},
    ]
    for method, path in routes:
        for headers in wrong:
            response = await api.request(
                method, path, headers={"Authorization": "", **headers}, json={}
            )
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["detail"] == "missing or invalid bearer token"
            assert TOKEN not in response.text and OTHER_TOKEN not in response.text
        # Either configured token is accepted.
        ok = await api.request(
            method, path, headers={"Authorization": f"Bearer {OTHER_TOKEN}"}, json={}
        )
        assert ok.status_code != 401, (method, path)
    # Request metrics are labelled by route template, never by task id.
    exposition = (await api.get("/metrics")).text
    assert 'path="/api/v1/tasks/{task_id}/status"' in exposition
    assert "some-task" not in exposition and 'status_code="401"' in exposition
    # Probes and the OpenAPI document need no token.
    for path in ("/healthz", "/readyz", "/metrics", "/schema/openapi.json"):
        assert (await api.get(path, headers={"Authorization": ""})).status_code == 200, path


async def test_status_walks_from_queued_through_running_to_completed(settings: Settings) -> None:
    gate = anyio.Event()

    async def gated(payload: dict[str, Any], ctx: TaskContext) -> None:
        await gate.wait()

    registry = api_registry(gated=gated)
    async with (
        serving_api(api_settings(settings), registry) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as api,
    ):
        response = await submit(api, {"task_type": "gated", "payload": {}})
        task_id = response.json()["task_id"]
        assert (await status_of(api, task_id))["status"] == "queued"
        async with running_worker(settings, registry):

            async def state_is(name: str) -> bool:
                return (await status_of(api, task_id))["status"] == name

            await wait_for(lambda: state_is("running"))
            running = await status_of(api, task_id)
            assert running["started_at"] and running["completed_at"] is None
            gate.set()
            await wait_for(lambda: state_is("completed"))
        http_view = await status_of(api, task_id)
    # The CLI reads the same state.
    cli = await anyio.run_process(
        [sys.executable, "-m", "streamworker", "status", task_id, "--json"],
        env=worker_env(settings),
        cwd=ROOT,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr.decode()
    assert json.loads(cli.stdout) == http_view


async def test_failing_task_ends_failed_with_last_error(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    response = await submit(api, {"task_type": "always_fails", "payload": {}, "max_retries": 1})
    task_id = response.json()["task_id"]
    async with running_worker(settings, api_registry()):

        async def failed() -> bool:
            return (await status_of(api, task_id))["status"] == "failed"

        await wait_for(failed)
    final = await status_of(api, task_id)
    assert final["retry_count"] >= 1
    assert final["last_error"] and "RuntimeError" in final["last_error"]


async def test_cancel_a_scheduled_task_and_conflicts(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    due = time.time() + 3 * 86400  # beyond the status retention: the marker must outlive it
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due))
    response = await submit(
        api, {"task_type": "test_notification", "payload": {"message": "m"}, "scheduled_for": when}
    )
    assert response.status_code == 202 and response.json()["status"] == "scheduled"
    assert parse_time(response.json()["estimated_completion"]) >= due
    task_id = response.json()["task_id"]

    cancelled = await api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"task_id": task_id, "status": "cancelled", "cancelled": True}
    shown = await status_of(api, task_id)
    assert shown["status"] == "cancelled" and shown["completed_at"]
    assert 0 < await redis.ttl(keys.status(task_id)) <= settings.completed_ttl_seconds
    marker_ttl = await redis.ttl(keys.cancelled(task_id))
    assert marker_ttl > settings.completed_ttl_seconds + 3 * 86400 - 60
    again = await api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    unknown = await api.post("/api/v1/tasks/no-such-task/cancel")
    assert unknown.status_code == 404 and "not found" in unknown.json()["detail"]

    done = await submit(api, {"task_type": "test_notification", "payload": {"message": "m"}})
    done_id = done.json()["task_id"]
    async with running_worker(settings, api_registry()):

        async def completed() -> bool:
            return (await status_of(api, done_id))["status"] == "completed"

        await wait_for(completed)
    conflict = await api.post(f"/api/v1/tasks/{done_id}/cancel")
    assert conflict.status_code == 409
    assert conflict.json()["status"] == "completed" and "completed" in conflict.json()["detail"]
    assert await redis.exists(keys.cancelled(done_id)) == 0


async def test_cancel_command_line(settings: Settings, api: httpx.AsyncClient) -> None:
    response = await submit(api, {"task_type": "test_notification", "payload": {"message": "m"}})
    task_id = response.json()["task_id"]
    env = worker_env(settings)

    async def cancel(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await anyio.run_process(
            [sys.executable, "-m", "streamworker", "cancel", *args], env=env, cwd=ROOT, check=False
        )

    first = await cancel(task_id, "--json")
    assert first.returncode == 0, first.stderr.decode()
    assert json.loads(first.stdout)["status"] == "cancelled"
    assert (await status_of(api, task_id))["status"] == "cancelled"
    missing = await cancel("no-such-task")
    assert missing.returncode == 1 and b"not found" in missing.stderr


async def test_racing_duplicate_submits_enqueue_once(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    body = {"task_type": "test_notification", "payload": {"message": "once"}}
    results: list[httpx.Response] = []

    async def one(i: int) -> None:
        if i % 2:
            results.append(await submit(api, body, headers={"Idempotency-Key": "order-42"}))
        else:
            results.append(await submit(api, {**body, "idempotency_key": "order-42"}))

    async with anyio.create_task_group() as tg:
        for i in range(24):
            tg.start_soon(one, i)
    assert all(r.status_code == 202 for r in results), [r.text for r in results]
    assert len({r.json()["task_id"] for r in results}) == 1
    assert [r.headers["Idempotent-Replayed"] for r in results].count("false") == 1
    keys = Keyspace(settings.prefix)
    assert await redis.xlen(keys.family("normal").stream) == 1
    # A different key is a different task; header and field must agree when both are given.
    other = await submit(api, body, headers={"Idempotency-Key": "order-43"})
    assert other.json()["task_id"] != results[0].json()["task_id"]
    clash = await submit(
        api, {**body, "idempotency_key": "order-42"}, headers={"Idempotency-Key": "order-43"}
    )
    assert clash.status_code == 400 and "differ" in clash.json()["detail"]


OK = {"message": "m"}
BAD_BODIES: list[tuple[Any, str]] = [
    ({"task_type": "nope", "payload": OK}, "unknown task type"),
    ({"task_type": "send_medication_reminder", "payload": {"user_id": "u"}}, "medication_name"),
    (
        {
            "task_type": "send_medication_reminder",
            "payload": {
                "user_id": "u",
                "medication_name": "m",
                "dosage": "d",
                "reminder_time": "25:99",
            },
        },
        "reminder_time",
    ),
    ({"task_type": "test_notification", "payload": {"message": 5}}, "message"),
    ({"task_type": "test_notification", "priority": "urgent", "payload": OK}, "priority"),
    (
        {"task_type": "test_notification", "scheduled_for": "tomorrow", "payload": OK},
        "scheduled_for",
    ),
    (
        {"task_type": "test_notification", "scheduled_for": "2030-01-01T10:00:00", "payload": OK},
        "time zone",
    ),
    ({"task_type": "test_notification", "max_retries": -1, "payload": OK}, "max_retries"),
    ({"task_type": "test_notification", "timeout_seconds": 0, "payload": OK}, "timeout_seconds"),
    ({"task_type": "test_notification", "payload": [1, 2]}, "payload"),
    ({"task_type": "test_notification", "payload": "text"}, "payload"),
    ({"payload": {"message": "m"}}, "task_type"),
    ({"task_type": "test_notification"}, "payload"),
    ({"task_type": "has space", "payload": OK}, "task_type"),
    ([1, 2, 3], "body"),
]


async def test_bad_requests_get_400_naming_the_problem_and_write_nothing(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    for body, named in BAD_BODIES:
        response = await api.post("/api/v1/tasks/submit", json=body)
        assert response.status_code == 400, (body, response.text)
        assert named in response.json()["detail"], (body, response.text)
    raw_cases = [b"{not json", b"", b'{"task_type": "test_notification", "payload": {}']
    for raw in raw_cases:
        response = await api.post(
            "/api/v1/tasks/submit", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (raw, response.text)
        assert response.json()["detail"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        response = await api.post(
            "/api/v1/tasks/submit", content=b"task_type=x", headers={"Content-Type": content_type}
        )
        assert response.status_code == 415, (content_type, response.text)
        assert "JSON" in response.json()["detail"]
    unknown = await api.get("/api/v1/tasks/no-such-task/status")
    assert unknown.status_code == 404 and "not found" in unknown.json()["detail"]
    stats = (await api.get("/api/v1/tasks/stats")).json()
    assert stats["backlog"] == 0 and stats["delayed"] == 0  # nothing bad reached a stream


async def test_oversized_bodies_get_413_before_they_are_read(settings: Settings) -> None:
    limit = 4096
    async with (
        serving_api(api_settings(settings, max_payload_bytes=limit)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as api,
    ):
        big = {"task_type": "test_notification", "payload": {"message": "x" * limit}}
        response = await api.post("/api/v1/tasks/submit", json=big)
        assert response.status_code == 413 and "4096 byte limit" in response.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"task_type": "test_notification", "payload": {"message": "'
            for _ in range(64):
                yield b"y" * 1024
            yield b'"}}'

        streamed = await api.post(
            "/api/v1/tasks/submit", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413

        # A client announcing 100 MB gets its answer after sending only the headers.
        port = int(url.rsplit(":", 1)[1])
        with anyio.fail_after(20):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                await stream.send(
                    b"POST /api/v1/tasks/submit HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"
                )
                head = await stream.receive()
        assert head.startswith(b"HTTP/1.1 413"), head[:100]


async def test_redis_down_gives_503_with_retry_after_and_the_api_recovers(
    settings: Settings,
) -> None:
    private = EmbeddedRedis(appendonly=True, appendfsync="always").start()
    try:
        own = settings.with_overrides(redis_url=private.url)
        async with (
            serving_api(api_settings(own)) as url,
            httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as api,
        ):
            body = {"task_type": "test_notification", "payload": {"message": "m"}}
            before = await submit(api, body)
            assert before.status_code == 202
            assert (await api.get("/readyz")).status_code == 200
            private.kill()
            for response in (
                await api.get("/readyz"),
                await submit(api, body),
                await api.get(f"/api/v1/tasks/{before.json()['task_id']}/status"),
            ):
                assert response.status_code == 503, response.text
                assert int(response.headers["Retry-After"]) > 0
                assert response.json()["detail"]
            assert (await api.get("/healthz")).status_code == 200  # alive, just not ready
            private.start()

            async def ready() -> bool:
                return (await api.get("/readyz")).status_code == 200

            await wait_for(ready)
            after = await submit(api, body)
            assert after.status_code == 202, after.text
            shown = await status_of(api, before.json()["task_id"])  # kept by the append-only file
            assert shown["status"] == "queued"
    finally:
        private.close()


async def test_no_payload_in_logs(
    settings: Settings, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "PATIENT-SENTINEL-7731"
    caplog.set_level(logging.DEBUG)
    await submit(api, {"task_type": "test_notification", "payload": {"message": secret}})
    await submit(api, {"task_type": "test_notification", "payload": {"message": 5, "x": secret}})
    await submit(api, {"task_type": "nope", "payload": {"message": secret}})
    await api.post(
        "/api/v1/tasks/submit", content=secret.encode(), headers={"Content-Type": "text/plain"}
    )
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert all(secret not in str(value) for value in vars(record).values())


async def test_estimate_follows_backlog_and_measured_rate(
    settings: Settings, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    normal = keys.family("normal").stream
    for family in keys.families:
        await redis.xgroup_create(family.stream, settings.group, id="0", mkstream=True)
    # Redis reports the group's entries-read counter once the group has read something.
    first = [await redis.xadd(normal, {"task_type": "t", "payload": "{}"}) for _ in range(10)]
    await redis.xreadgroup(settings.group, "c1", {normal: ">"}, count=10)
    await redis.xack(normal, settings.group, *first)
    await redis.xdel(normal, *first)
    clock = [1000.0]
    sampler = BacklogSampler(redis, keys, settings.group, clock=lambda: clock[0])
    await sampler.sample()
    now = time.time()
    # Idle and empty: starts at once.
    assert sampler.estimate("normal", now, now) == pytest.approx(now + RUN_ALLOWANCE_SECONDS)
    for i in range(100):
        await redis.xadd(normal, {"task_type": "t", "payload": "{}", "i": str(i)})
    await redis.xreadgroup(settings.group, "c1", {normal: ">"}, count=50)
    clock[0] += 10.0  # 50 entries taken in 10 s: 5 per second
    await sampler.sample()
    assert sampler.rate() == pytest.approx(5.0)
    assert sampler.backlog_ahead("normal") == 100  # 50 waiting + 50 pending
    assert sampler.backlog_ahead("high") == 0
    assert sampler.backlog_ahead("low") == 100
    assert sampler.estimate("normal", now, now) == pytest.approx(now + 20 + RUN_ALLOWANCE_SECONDS)
    assert sampler.estimate("high", now, now) == pytest.approx(now + RUN_ALLOWANCE_SECONDS)
    later = now + 3600
    assert sampler.estimate("normal", later, now) == pytest.approx(later + RUN_ALLOWANCE_SECONDS)
    # Work waiting and nothing taken over the window: no honest estimate.
    for _ in range(70):
        clock[0] += 1.0
        await sampler.sample()
    assert sampler.rate() == 0 and sampler.estimate("normal", now, now) is None


async def test_api_command_refuses_to_start_without_tokens(settings: Settings) -> None:
    env = worker_env(settings)
    env.pop("API_TOKENS", None)
    refused = await anyio.run_process(
        [sys.executable, "-m", "streamworker", "api", "--port", "1"],
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert refused.returncode == 2 and b"API_TOKENS" in refused.stderr


async def test_api_command_serves_with_tokens_and_stops_on_sigterm(settings: Settings) -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = worker_env(settings, API_TOKENS=f"{TOKEN},{OTHER_TOKEN}")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamworker", "api", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    assert process.poll() is None, process.stderr.read() if process.stderr else ""
                    return False

            await wait_for(up, timeout=60)
            assert (await client.get("/api/v1/tasks/stats")).status_code == 401
            stats = await client.get("/api/v1/tasks/stats", headers=AUTH)
            assert stats.status_code == 200 and stats.json()["group"] == settings.group
        process.terminate()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if process.stderr is not None:
            process.stderr.close()


async def test_dead_letters_list_page_filter_and_replay(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    ids = []
    for _ in range(5):
        response = await submit(api, {"task_type": "always_fails", "payload": {}, "max_retries": 0})
        ids.append(response.json()["task_id"])
    async with running_worker(settings, api_registry()):

        async def all_dead() -> bool:
            page = (await api.get("/api/v1/dead-letters")).json()
            return len(page["entries"]) == 5

        await wait_for(all_dead)
    first = (await api.get("/api/v1/dead-letters", params={"limit": 2})).json()
    assert first["total"] == 5 and len(first["entries"]) == 2 and first["next_cursor"]
    assert all("payload" not in e for e in first["entries"])
    rest = (
        await api.get("/api/v1/dead-letters", params={"limit": 10, "after": first["next_cursor"]})
    ).json()
    listed = [e["task_id"] for e in first["entries"] + rest["entries"]]
    assert sorted(listed) == sorted(ids) and rest["next_cursor"] is None
    wrong_type = await api.get("/api/v1/dead-letters", params={"task_type": "care_alert"})
    assert wrong_type.json()["entries"] == []
    by_reason = await api.get("/api/v1/dead-letters", params={"reason": "max_retries_exceeded"})
    assert len(by_reason.json()["entries"]) == 5
    for params in (
        {"reason": "bogus"},
        {"after": "x"},
        {"limit": 0},
        {"reasn": "max_retries_exceeded"},  # a misspelt filter must not widen the list
        [("reason", "malformed"), ("reason", "too_large")],
    ):
        bad = await api.get("/api/v1/dead-letters", params=params)
        assert bad.status_code == 400 and bad.json()["detail"], params

    dry = await api.post("/api/v1/dead-letters/replay", json={"all": True, "dry_run": True})
    assert dry.status_code == 200 and dry.json()["would_replay"] == 5
    assert (await api.get("/api/v1/dead-letters")).json()["total"] == 5
    one = first["entries"][0]
    replayed = await api.post("/api/v1/dead-letters/replay", json={"ids": [one["id"]]})
    assert replayed.json()["replayed"] == 1, replayed.text
    assert (await status_of(api, one["task_id"]))["status"] == "queued"
    assert await redis.xlen(Keyspace(settings.prefix).family("normal").stream) == 1
    for body in ({}, {"all": True, "task_type": "x"}, {"ids": ["nope"]}, {"ids": []}):
        bad = await api.post("/api/v1/dead-letters/replay", json=body)
        assert bad.status_code == 400 and bad.json()["detail"], body


def test_reason_filter_lists_every_dead_letter_reason() -> None:
    assert set(get_args(Reason)) == set(DLQ_REASONS)


async def test_dev_mode_prints_a_curl_line_that_works(settings: Settings) -> None:
    env = worker_env(settings, STREAMWORKER_HANDLERS="handlers", PORT=str(_free_port()))
    env.pop("REDIS_URL")
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamworker", "dev"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:

            def printed() -> str:
                log.seek(0)
                return log.read().decode(errors="replace")

            await wait_for(lambda: "curl -X POST" in printed() or process.poll() is not None, 60)
            line = next(x for x in printed().splitlines() if "curl -X POST" in x)
            args = shlex.split(line.strip())  # as a shell would read the pasted line
            url = args[args.index("POST") + 1]
            headers = dict(
                h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H")
            )
            body = args[args.index("-d") + 1]
            async with httpx.AsyncClient() as client:
                response = await client.post(url, content=body, headers=headers)
                assert response.status_code == 202, response.text
                task_id = response.json()["task_id"]
                status_url = url.replace("/submit", f"/{task_id}/status")

                async def completed() -> bool:
                    shown = await client.get(status_url, headers=headers)
                    return bool(shown.json()["status"] == "completed")

                await wait_for(completed)
                without = await client.post(url, content=body)
                assert without.status_code == 401
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, printed()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def _free_port() -> int:
    sock = loopback_socket()
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


async def test_real_fault_is_a_500_with_json_detail_and_no_leak(
    settings: Settings,
    api: httpx.AsyncClient,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A status key of the wrong type: Redis answers WRONGTYPE, a fault no client can fix.
    await redis.set(Keyspace(settings.prefix).status("broken"), "PATIENT-SENTINEL-9")
    caplog.set_level(logging.INFO)
    response = await api.get("/api/v1/tasks/broken/status")
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "internal server error"}
    faults = [r for r in caplog.records if r.getMessage() == "api_internal_error"]
    assert faults and vars(faults[0])["error_type"] == "ResponseError"
    assert all("PATIENT-SENTINEL-9" not in str(vars(r)) for r in caplog.records)


async def test_readyz_recreates_a_lost_consumer_group(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    keys = Keyspace(settings.prefix)
    assert (await api.get("/readyz")).status_code == 200
    await redis.delete(*(f.stream for f in keys.families))  # as after a Redis without its data
    assert (await api.get("/readyz")).status_code == 200
    for family in keys.families:
        groups = await redis.xinfo_groups(family.stream)
        assert [g["name"] for g in groups] == [settings.group.encode()]


async def test_openapi_document_declares_bearer_auth_and_the_contract_routes(
    api: httpx.AsyncClient,
) -> None:
    doc = (await api.get("/schema/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert {
        "/api/v1/tasks/submit",
        "/api/v1/tasks/{task_id}/status",
        "/api/v1/tasks/{task_id}/cancel",
        "/api/v1/tasks/stats",
        "/api/v1/dead-letters",
        "/api/v1/dead-letters/replay",
        "/healthz",
        "/readyz",
    } <= set(doc["paths"])
    submit_op = doc["paths"]["/api/v1/tasks/submit"]["post"]
    assert submit_op["security"] == [{"BearerToken": []}]
    assert {"202", "400", "401", "413", "415", "503"} <= set(submit_op["responses"])


async def test_cancelled_queued_and_scheduled_tasks_never_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    ran: list[str] = []

    async def record(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    registry = api_registry(record=record)
    keys = Keyspace(settings.prefix)
    async with (
        serving_api(api_settings(settings), registry) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as api,
    ):
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        queued = (await submit(api, {"task_type": "record", "payload": {}})).json()["task_id"]
        scheduled = (
            await submit(api, {"task_type": "record", "payload": {}, "scheduled_for": soon})
        ).json()["task_id"]
        kept = (await submit(api, {"task_type": "record", "payload": {}})).json()["task_id"]
        for task_id in (queued, scheduled):
            assert (await api.post(f"/api/v1/tasks/{task_id}/cancel")).status_code == 200
        async with running_worker(settings, registry):
            await wait_for(lambda: kept in ran)

            async def all_gone() -> bool:  # the scheduled one came due and was let go too
                stats = (await api.get("/api/v1/tasks/stats")).json()
                return bool(stats["backlog"] == 0 and stats["delayed"] == 0)

            await wait_for(all_gone)
        assert ran == [kept]
        for task_id in (queued, scheduled):
            assert (await status_of(api, task_id))["status"] == "cancelled"
        assert (await status_of(api, kept))["status"] == "completed"
    assert await redis.xlen(keys.family("normal").stream) == 0


async def test_api_starts_without_redis_and_says_it_is_not_ready(settings: Settings) -> None:
    nowhere = settings.with_overrides(redis_url=f"redis://127.0.0.1:{_free_port()}/0")
    async with (
        serving_api(api_settings(nowhere)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as api,
    ):
        assert (await api.get("/healthz")).status_code == 200
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        assert "Redis is unavailable" in ready.json()["detail"]
        body = {"task_type": "test_notification", "payload": {"message": "m"}}
        assert (await submit(api, body)).status_code == 503


async def test_redis_out_of_memory_is_a_503_not_a_500(settings: Settings) -> None:
    full = EmbeddedRedis(extra_args=("--maxmemory", "1mb", "--maxmemory-policy", "noeviction"))
    full.start()
    try:
        async with (
            serving_api(api_settings(settings.with_overrides(redis_url=full.url))) as url,
            httpx.AsyncClient(base_url=url, headers=AUTH) as api,
        ):
            body = {"task_type": "test_notification", "payload": {"message": "m"}}
            response = await submit(api, body)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] and response.json()["detail"]
    finally:
        full.close()
