"""``/api/v1/schedules`` over a real HTTP server, beside the CLI's behaviour."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from streamworker import Settings
from streamworker.keyspace import Keyspace
from tests.api_helpers import TOKEN, api_registry, api_settings, serving_api

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_list_pause_resume_run_over_http(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "schedules:\n"
        "  - name: ping\n"
        "    cron: '*/10 * * * *'\n"
        "    task_type: test_notification\n"
        "    payload: {message: scheduled ping}\n"
        "    priority: low\n"
    )
    keys = Keyspace(settings.prefix)
    s = api_settings(settings, schedules_file=str(path))
    async with (
        serving_api(s, api_registry()) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as api,
    ):
        listed = await api.get("/api/v1/schedules")
        assert listed.status_code == 200, listed.text
        (ping,) = listed.json()["schedules"]
        assert ping["name"] == "ping" and ping["next_fire"] and not ping["paused"]
        assert (
            await api.get("/api/v1/schedules", headers={"Authorization": ""})
        ).status_code == 401

        paused = await api.post("/api/v1/schedules/ping/pause")
        assert paused.status_code == 200 and paused.json() == {"schedule": "ping", "paused": True}
        assert await redis.hget(keys.scheduler_state, "ping:paused") == b"1"
        assert (await api.get("/api/v1/schedules")).json()["schedules"][0]["next_fire"] is None
        resumed = await api.post("/api/v1/schedules/ping/resume")
        assert resumed.status_code == 200 and not resumed.json()["paused"]

        ran = await api.post("/api/v1/schedules/ping/run")
        assert ran.status_code == 202, ran.text
        task_id = ran.json()["task_id"]
        status = await api.get(f"/api/v1/tasks/{task_id}/status")
        assert status.json()["task_type"] == "test_notification"
        assert status.json()["priority"] == "low"

        missing = await api.post("/api/v1/schedules/nope/run")
        assert missing.status_code == 404 and "no schedule named 'nope'" in missing.json()["detail"]
        bad_name = await api.post("/api/v1/schedules/bad%20name/pause")
        assert bad_name.status_code == 400

        path.write_text("schedules:\n  - {name: broken, cron: '0 25 * * *', task_type: noop}\n")
        broken = await api.get("/api/v1/schedules")
        assert broken.status_code == 500 and "'broken'" in broken.json()["detail"]
        assert (await api.get(f"/api/v1/tasks/{task_id}/status")).status_code == 200
