"""Files and targets a task must not reach: path traversal and symlinks out of CLEANUP_ROOT,
SSRF targets for webhooks — each refused with a permanent-failure reason. Exports: the
manifest's checksum verifies; reports aggregate the queue and the dead letters."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import handlers  # noqa: F401  (registers the domain handlers)
from streamworker import Producer, Settings
from streamworker.channels.ssrf import is_public_address
from streamworker.keyspace import Keyspace
from streamworker.registry import default_registry
from tests.channel_servers import http_receiver
from tests.conftest import running_worker, status_is, wait_for
from tests.test_handlers_email import status_of

pytestmark = pytest.mark.anyio


async def dead_letters(redis: aioredis.Redis, s: Settings) -> dict[str, dict[str, str]]:
    entries = await redis.xrange(Keyspace(s.prefix).dead_letters)
    out = {}
    for _, f in entries:
        fields = {k.decode(): v.decode() for k, v in f.items()}
        out[fields["task_id"]] = fields
    return out


def _old(path: Path, hours: float = 48) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)


async def test_file_cleanup_stays_inside_its_root(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "uploads" / "nested").mkdir(parents=True)
    outside.mkdir()
    victim = outside / "precious.txt"
    victim.write_text("keep me")
    _old(victim)
    old_file = root / "uploads" / "old.bin"
    old_file.write_bytes(b"x" * 100)
    _old(old_file)
    nested_old = root / "uploads" / "nested" / "old2.bin"
    nested_old.write_bytes(b"y" * 10)
    _old(nested_old)
    fresh = root / "uploads" / "fresh.bin"
    fresh.write_bytes(b"z")
    # symlinks inside the tree that point out of it: never followed, never deleted through
    (root / "uploads" / "link_to_file").symlink_to(victim)
    (root / "uploads" / "link_to_dir").symlink_to(outside, target_is_directory=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)

    s = settings.with_overrides(cleanup_root=str(root))
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        ok = await producer.publish("file_cleanup", {"file_path": "uploads", "max_age_hours": 24})
        refused = {
            name: await producer.publish(
                "file_cleanup", {"file_path": path, "max_age_hours": 1}, max_retries=3
            )
            for name, path in {
                "dotdot": "../outside",
                "dotdot_nested": "uploads/../../outside",
                "absolute": str(outside),
                "symlink_dir": "escape",
                "symlink_file": "uploads/link_to_file",
                "etc": "/etc",
            }.items()
        }
        await wait_for(lambda: status_is(redis, s, ok, "completed"))
        for task_id in refused.values():
            await wait_for(lambda t=task_id: status_is(redis, s, t, "failed"))
    await producer.aclose()
    assert not old_file.exists() and not nested_old.exists()
    assert fresh.exists()
    assert victim.read_text() == "keep me" and outside.is_dir()
    assert (root / "uploads" / "link_to_file").is_symlink()
    dead = await dead_letters(redis, s)
    for name, task_id in refused.items():
        entry = dead[task_id]
        assert entry["dlq_reason"] == "permanent_failure", name
        assert "outside CLEANUP_ROOT" in entry["dlq_error"], name
        assert str(outside) not in entry["dlq_error"]  # no paths in error texts
        assert (await status_of(redis, s, task_id)).get("retry_count", "0") == "0"  # absent is 0


async def test_file_cleanup_without_a_root_is_refused(
    settings: Settings, redis: aioredis.Redis
) -> None:
    producer = Producer.from_settings(settings, contracts=default_registry.contracts)
    async with running_worker(settings, default_registry):
        task_id = await producer.publish("file_cleanup", {"file_path": "x", "max_age_hours": 1})
        await wait_for(lambda: status_is(redis, settings, task_id, "failed"))
    await producer.aclose()
    assert "CLEANUP_ROOT" in (await dead_letters(redis, settings))[task_id]["dlq_error"]


async def test_webhook_ssrf_targets_are_refused(settings: Settings, redis: aioredis.Redis) -> None:
    with http_receiver() as receiver:
        s = settings.with_overrides(webhook_secret="s", webhook_allow_private=False)
        producer = Producer.from_settings(s, contracts=default_registry.contracts)
        targets = {
            "loopback": f"{receiver.url}/hook",
            "localhost": f"http://localhost:{receiver.port}/hook",
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "private": "http://10.1.2.3/hook",
            "ipv6_loopback": f"http://[::1]:{receiver.port}/hook",
            "mapped": "http://[::ffff:127.0.0.1]/hook",
            "zero": "http://0.0.0.0/hook",
            "scheme": "file:///etc/passwd",
        }
        async with running_worker(s, default_registry):
            ids = {
                name: await producer.publish("webhook", {"url": url}, max_retries=3)
                for name, url in targets.items()
            }
            for task_id in ids.values():
                await wait_for(lambda t=task_id: status_is(redis, s, t, "failed"))
        await producer.aclose()
        assert receiver.requests == []  # nothing reached the private address
    dead = await dead_letters(redis, s)
    for name, task_id in ids.items():
        assert dead[task_id]["dlq_reason"] == "permanent_failure", name
        expected = "http or https" if name == "scheme" else "private, loopback or link-local"
        assert expected in dead[task_id]["dlq_error"], name


def test_public_address_check() -> None:
    assert is_public_address("93.184.216.34")
    assert is_public_address("2606:2800:220:1:248:1893:25c8:1946")
    for address in ("127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
                    "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "0.0.0.0",
                    "224.0.0.1", "198.51.100.7"):  # fmt: skip
        assert not is_public_address(address), address


async def test_export_manifest_checksum_verifies(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    s = settings.with_overrides(export_dir=str(tmp_path / "exports"))
    rows = [{"site": f"s{i}", "visits": i, "score": i / 3, "note": None} for i in range(500)]
    rows.append({"site": "=cmd|' /C calc'!A0", "visits": 0, "score": 0.0, "note": "x"})
    producer = Producer.from_settings(s, contracts=default_registry.contracts)
    async with running_worker(s, default_registry):
        csv_id = await producer.publish(
            "data_export", {"rows": rows, "format": "csv", "export_name": "visits"}
        )
        jsonl_id = await producer.publish("data_export", {"dataset": "queue_stats"})
        report_id = await producer.publish(
            "report_generation", {"report_type": "task_summary", "start_date": "2020-01-01"}
        )
        for task_id in (csv_id, jsonl_id, report_id):
            await wait_for(lambda t=task_id: status_is(redis, s, t, "completed"))
        # Only now: published earlier, its dead letter could land before the report counts.
        bad = await producer.publish(
            "report_generation", {"start_date": "2024-02-01", "end_date": "2024-01-01"}
        )
        await wait_for(lambda: status_is(redis, s, bad, "failed"))
    await producer.aclose()
    export_dir = tmp_path / "exports"
    for name in ("visits", f"export-{jsonl_id}"):
        manifest = json.loads((export_dir / f"{name}.manifest.json").read_text())
        data = (export_dir / manifest["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
        assert len(data) == manifest["bytes"]
    manifest = json.loads((export_dir / "visits.manifest.json").read_text())
    assert manifest["rows"] == 501 and manifest["columns"] == ["site", "visits", "score", "note"]
    with (export_dir / "visits.csv").open(newline="") as f:
        read = list(csv.DictReader(f))
    assert len(read) == 501 and read[3]["visits"] == "3"
    assert read[-1]["site"].startswith("'=")  # a formula is kept as text
    lines = (export_dir / f"export-{jsonl_id}.jsonl").read_text().splitlines()
    assert [json.loads(line)["priority"] for line in lines] == ["critical", "high", "normal", "low"]
    report = json.loads((export_dir / "reports" / f"task_summary-{report_id}.json").read_text())
    assert report["dead_letters"]["total"] == 0
    assert set(report["queues"]) == {"critical", "high", "normal", "low"}
    assert not list(export_dir.glob(".*.part"))  # no half-written files left behind
    dead = await dead_letters(redis, s)
    assert "start_date is after end_date" in dead[bad]["dlq_error"]
