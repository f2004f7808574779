"""The alert rules and the Grafana dashboard: promtool checks and unit-tests the rules, and
every metric either of them names is one the service really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamworker.hooks import Outcome, TaskEnd, WorkerEvent
from streamworker.keyspace import Keyspace
from streamworker.observability.audit import AuditBuffer, AuditCollector, StreamSink
from streamworker.observability.metrics import MetricsHook, QueueCollector, WorkerStateCollector
from streamworker.wire import Task
from tests.conftest import ROOT

pytestmark = pytest.mark.anyio

FILES = ROOT / "helm" / "streamworker" / "files"
RULES = FILES / "prometheus-rules.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"
# Our metric names all start like this; PromQL functions and labels do not.
_NAME = re.compile(r"\b((?:tasks?|streamworker)_[a-z_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make promtool` (Debian package prometheus) installs it"
    return path


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_promtool_unit_tests_fire_each_alert_when_meant_to() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alert_rules_test.yaml"],
        cwd=ROOT / "tests" / "data",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_the_seed_alerts_and_have_runbook_text() -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {
        "TaskQueueDepthHigh",
        "TaskFailureRateHigh",
        "NotificationDeliveryFailures",
        "TaskPendingOlderThanVisibilityTimeout",
        "DeadLettersGrowing",
        "TaskQueueNoConsumers",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    depth = next(r for r in rules if r["alert"] == "TaskQueueDepthHigh")
    assert "task_queue_size" in depth["expr"] and "1000" in depth["expr"] and depth["for"] == "15m"
    failure = next(r for r in rules if r["alert"] == "TaskFailureRateHigh")
    assert "[10m]" in failure["expr"] and "0.05" in failure["expr"]


async def exported_names(redis: aioredis.Redis) -> set[str]:
    """Every sample name a worker process exports, after each kind of event once."""
    registry = CollectorRegistry()
    hook = MetricsHook(registry, {"care_alert"})
    task = Task(task_id="t", task_type="care_alert", payload=b"{}", priority="high")
    hook.before(task, 1.0, 0.5)
    for outcome in Outcome:
        hook.after(task, None, TaskEnd(outcome, 0.1, ValueError(), "permanent_failure"))
    for event in WorkerEvent:
        hook.event(event, "high", 1)
    queues = QueueCollector(redis, Keyspace("alert-rules-test:"), "streamworker")
    await queues.refresh()
    registry.register(queues)

    class Worker:
        in_flight = 0
        concurrency = 5

    registry.register(WorkerStateCollector(Worker(), 60.0))
    registry.register(
        AuditCollector(
            [StreamSink(AuditBuffer("stream", 100), redis, "x", 100, service="s", consumer="c")]
        )
    )
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


async def test_every_metric_named_by_rules_and_dashboard_is_exported(redis: aioredis.Redis) -> None:
    names = await exported_names(redis)
    for seed in (
        "tasks_processed_total",
        "task_processing_duration_seconds_bucket",
        "task_queue_size",
        "task_failures_total",
    ):
        assert seed in names
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    used = {name for expr in exprs for name in _NAME.findall(expr)} - {"task_type"}  # a label
    assert used, "no metric names found"
    assert used <= names, f"not exported: {sorted(used - names)}"
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "processing time", "backlog", "failures", "dead-letter"):
        assert topic in titles, topic


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["expr"] for t in panel["targets"])
