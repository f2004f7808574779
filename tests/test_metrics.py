"""Prometheus metrics scraped over HTTP from a running worker, after a known workload."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from streamworker import PermanentError, Producer, Registry, Settings, TaskContext, TaskSpec, Worker
from streamworker.broker import connect
from streamworker.embedded import EmbeddedRedis, free_port
from streamworker.keyspace import Keyspace
from streamworker.observability import build_observability
from streamworker.observability.audit import stream_events
from streamworker.observability.http import MetricsServer
from streamworker.settings import ConfigError
from tests.conftest import WorkerProcess, running_worker, start_worker_process, wait_for

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> tuple[Samples, str]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    text = response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def workload_registry(hold: anyio.Event) -> Registry:
    registry = Registry()

    @registry.handler("ok")
    async def ok(payload: dict[str, Any], ctx: TaskContext) -> None:
        return None

    @registry.handler("flaky", max_retries=2)
    async def flaky(payload: dict[str, Any], ctx: TaskContext) -> None:
        raise ValueError("always")

    @registry.handler("perm")
    async def perm(payload: dict[str, Any], ctx: TaskContext) -> None:
        raise PermanentError("no")

    @registry.handler("hold")
    async def held(payload: dict[str, Any], ctx: TaskContext) -> None:
        await hold.wait()

    return registry


async def test_seed_metrics_and_queue_gauges_after_a_known_workload(
    settings: Settings, redis: aioredis.Redis
) -> None:
    hold = anyio.Event()
    registry = workload_registry(hold)
    settings = settings.with_overrides(metrics_port=free_port(), audit_enabled=False)
    obs = build_observability(settings, task_types=registry, redis=redis)
    assert obs.metrics is not None
    producer = Producer.from_settings(settings, redis=redis, contracts=registry.contracts)
    port = settings.metrics_port
    assert port is not None
    async with running_worker(settings, registry, hooks=obs.task_hooks, metrics=obs.metrics):
        specs = [TaskSpec(task_type="ok", payload={}) for _ in range(100)]
        specs += [TaskSpec(task_type="flaky", payload={}) for _ in range(10)]
        specs += [TaskSpec(task_type="perm", payload={}) for _ in range(5)]
        await producer.publish_many(specs)
        # bad input from outside: an unregistered type name must not become a label
        await redis.xadd(
            f"{settings.prefix}normal_priority_tasks",
            {"task_type": "patient-123-specific", "payload": "{}"},
        )

        async def settled() -> bool:
            samples, _ = await scrape(port)
            return (
                value(
                    samples,
                    "tasks_processed_total",
                    task_type="ok",
                    priority="normal",
                    outcome="completed",
                )
                == 100
                and value(
                    samples,
                    "task_dead_lettered_total",
                    priority="normal",
                    reason="max_retries_exceeded",
                )
                == 10
                and value(samples, "task_dead_letter_size") == 16
            )

        await wait_for(settled, timeout=60, interval=0.3)
        samples, text = await scrape(port)

        # the seed's names, with the counts the workload implies
        assert (
            value(
                samples,
                "tasks_processed_total",
                task_type="flaky",
                priority="normal",
                outcome="retrying",
            )
            == 20
        )
        assert (
            value(
                samples,
                "tasks_processed_total",
                task_type="flaky",
                priority="normal",
                outcome="dead_lettered",
            )
            == 10
        )
        assert (
            value(
                samples,
                "tasks_processed_total",
                task_type="perm",
                priority="normal",
                outcome="dead_lettered",
            )
            == 5
        )
        assert (
            value(
                samples,
                "tasks_processed_total",
                task_type="unknown",
                priority="normal",
                outcome="dead_lettered",
            )
            == 1
        )
        assert value(samples, "task_failures_total", task_type="flaky", reason="error") == 20
        assert (
            value(samples, "task_failures_total", task_type="flaky", reason="max_retries_exceeded")
            == 10
        )
        assert (
            value(samples, "task_failures_total", task_type="perm", reason="permanent_failure") == 5
        )
        assert (
            value(samples, "task_failures_total", task_type="unknown", reason="unknown_task_type")
            == 1
        )
        assert value(samples, "task_processing_duration_seconds_count", task_type="ok") == 100
        assert value(samples, "task_processing_duration_seconds_count", task_type="flaky") == 30
        # beside them
        assert value(samples, "task_retries_total", task_type="flaky", priority="normal") == 20
        assert (
            value(
                samples, "task_dead_lettered_total", priority="normal", reason="permanent_failure"
            )
            == 5
        )
        assert (
            value(
                samples, "task_dead_lettered_total", priority="normal", reason="unknown_task_type"
            )
            == 1
        )
        assert value(samples, "task_enqueue_to_start_seconds_count", priority="normal") == 135
        assert value(samples, "streamworker_handler_slots") == settings.worker_count
        assert value(samples, "task_queue_stats_up") == 1
        for priority in ("critical", "high", "normal", "low"):
            assert value(samples, "task_queue_size", priority=priority) == 0
            assert ("task_queue_size", frozenset({("priority", priority)})) in samples
        assert "patient-123" not in text  # never a label value from outside

        # a backlog: 12 held tasks on 8 slots = 8 pending + 4 not yet delivered
        await producer.publish_many(
            [TaskSpec(task_type="hold", payload={}, priority="low") for _ in range(12)]
        )

        async def backlog_seen() -> bool:
            samples, _ = await scrape(port)
            return (
                value(samples, "task_queue_pending", priority="low") == 8
                and value(samples, "streamworker_handlers_in_flight") == 8
            )

        await wait_for(backlog_seen, timeout=30, interval=0.3)
        samples, _ = await scrape(port)
        assert value(samples, "task_queue_size", priority="low") == 12  # lag + pending, not XLEN
        assert value(samples, "task_queue_lag", priority="low") == 4
        assert value(samples, "task_queue_consumers", priority="low") == 1
        assert value(samples, "task_queue_oldest_pending_age_seconds", priority="low") >= 0
        hold.set()

        async def drained() -> bool:
            samples, _ = await scrape(port)
            return value(samples, "task_queue_size", priority="low") == 0

        await wait_for(drained, timeout=30, interval=0.5)

        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
            missing = await client.get(f"http://127.0.0.1:{port}/nope")
            posted = await client.post(f"http://127.0.0.1:{port}/metrics")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert missing.status_code == 404
        assert posted.status_code == 405
    await producer.aclose()


async def test_garbage_request_gets_400_and_server_keeps_serving(settings: Settings) -> None:
    settings = settings.with_overrides(metrics_port=free_port(), audit_enabled=False)
    port = settings.metrics_port
    assert port is not None
    async with running_worker(settings, Registry()):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(b"\x00\x01 not http at all\r\n\r\n")
            reply = b""
            with anyio.move_on_after(10):
                while True:
                    try:
                        reply += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        assert reply.startswith(b"HTTP/1.1 400")
        samples, _ = await scrape(port)
        assert value(samples, "task_queue_stats_up") == 1


async def test_metrics_port_in_use_is_a_clear_error(
    settings: Settings, redis: aioredis.Redis
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings.with_overrides(metrics_port=port, audit_enabled=False)
        worker = Worker(settings, registry=Registry(), redis=redis)
        with pytest.raises(ConfigError, match=f"METRICS_PORT {port} cannot be listened on"):
            await worker.run()
    # The worker never ran: close the acker's queue it made up front.
    worker.acker.close()


def test_bad_metrics_port_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": "http"})
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": "70000"})


class _WorkerWithoutRedis:
    """What the metrics server reads from a worker, with a client whose Redis is gone."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keyspace(settings.prefix)
        self.in_flight = 0
        self.concurrency = 4
        self.stopping = False


async def test_unreachable_redis_makes_healthz_503_and_queue_gauges_unknown(
    settings: Settings,
) -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    settings = settings.with_overrides(metrics_port=free_port())
    port = settings.metrics_port
    server = MetricsServer(_WorkerWithoutRedis(settings, dead), ping_interval=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start((await server.bind()).run)

        async def unhealthy() -> bool:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 503

        await wait_for(unhealthy, timeout=30, interval=0.1)
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
        assert health["status"] == "redis_unreachable"
        samples, text = await scrape(port)
        assert value(samples, "task_queue_stats_up") == 0
        assert "task_queue_size" not in text  # unknown, not a stale or zero number
        assert value(samples, "streamworker_handler_slots") == 4
        tg.cancel_scope.cancel()
    await dead.aclose()


async def test_cli_worker_serves_metrics_and_flushes_audit_on_sigterm(
    settings: Settings, redis: aioredis.Redis, worker_processes: list[WorkerProcess]
) -> None:
    port = free_port()
    worker = start_worker_process(
        settings, registry=worker_processes, METRICS_PORT=str(port), LOG_LEVEL="info"
    )
    producer = Producer.from_settings(settings, redis=redis)
    await producer.publish_many([TaskSpec(task_type="noop", payload={}) for _ in range(20)])

    async def done() -> bool:
        try:
            samples, _ = await scrape(port)
        except httpx.HTTPError:
            return False  # not listening yet
        labels = {"task_type": "noop", "priority": "normal", "outcome": "completed"}
        return value(samples, "tasks_processed_total", **labels) == 20

    await wait_for(done, timeout=60, interval=0.3)
    samples, _ = await scrape(port)
    assert value(samples, "process_cpu_seconds_total") > 0  # the default registry's collectors
    assert value(samples, "streamworker_handler_slots") == 5
    # a second worker cannot have the port: one clear line, exit status 2
    second = start_worker_process(settings, registry=worker_processes, METRICS_PORT=str(port))
    assert await anyio.to_thread.run_sync(lambda: second.proc.wait(60)) == 2
    lines = second.output().strip().splitlines()
    assert len(lines) == 1 and "METRICS_PORT" in lines[0] and str(port) in lines[0], lines
    assert await anyio.to_thread.run_sync(worker.terminate) == 0, worker.output()
    audit = stream_events(await redis.xrange(Keyspace(settings.prefix).audit_events))
    assert len(audit) == 40  # started + completed for each, flushed at exit
    events = {json.loads(line)["event"] for line in worker.output().splitlines()}
    assert {"worker_started", "task_completed", "worker_stopping", "metrics_listening"} <= events
    await producer.aclose()


async def test_healthz_says_stopping_while_in_flight_tasks_drain(
    settings: Settings, redis: aioredis.Redis
) -> None:
    release = anyio.Event()
    started: list[str] = []
    registry = Registry()

    @registry.handler("slow")
    async def slow(payload: dict[str, Any], ctx: TaskContext) -> None:
        started.append(ctx.task_id)
        await release.wait()

    settings = settings.with_overrides(metrics_port=free_port(), audit_enabled=False)
    port = settings.metrics_port
    producer = Producer.from_settings(settings, redis=redis)
    async with running_worker(settings, registry) as worker:
        await producer.publish("slow", {})
        await wait_for(lambda: len(started) == 1)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            worker.stop()
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 503
        assert response.json() == {**response.json(), "status": "stopping", "in_flight": 1}
        release.set()
    await producer.aclose()


async def test_reclaimed_and_reaped_entries_are_counted_and_logged(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    ran: list[str] = []

    @registry.handler("job")
    async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    settings = settings.with_overrides(
        visibility_timeout_seconds=0.3,
        reclaim_interval_seconds=0.1,
        max_deliveries=2,
        metrics_port=free_port(),
        audit_enabled=False,
    )
    port = settings.metrics_port
    stream = Keyspace(settings.prefix).family("high").stream
    producer = Producer.from_settings(settings, redis=redis)
    await producer.publish_many(
        [TaskSpec(task_type="job", payload={}, priority="high") for _ in range(6)]
    )
    await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
    # a consumer that died with 4 entries (delivered once), and 2 delivered twice already:
    # with MAX_DELIVERIES=2 the reclaim makes those a third delivery, and the reaper takes them
    await redis.xreadgroup(settings.group, "dead-1", {stream: ">"}, count=2)
    await anyio.sleep(0.01)
    await redis.xautoclaim(stream, settings.group, "dead-2", 0, "0-0", count=2)
    await redis.xreadgroup(settings.group, "dead-1", {stream: ">"}, count=4)
    caplog.set_level(logging.INFO)
    obs = build_observability(settings, task_types=registry, redis=redis)
    async with running_worker(settings, registry, hooks=obs.task_hooks, metrics=obs.metrics):

        async def settled() -> bool:
            samples, _ = await scrape(port)
            return (
                value(samples, "task_reclaimed_total", priority="high") == 6
                and len(ran) == 4
                and value(
                    samples,
                    "task_dead_lettered_total",
                    priority="high",
                    reason="max_deliveries_exceeded",
                )
                == 2
            )

        await wait_for(settled, timeout=30, interval=0.2)
        samples, _ = await scrape(port)
    assert (
        value(
            samples, "tasks_processed_total", task_type="job", priority="high", outcome="completed"
        )
        == 4
    )
    assert (
        value(samples, "task_failures_total", task_type="unknown", reason="max_deliveries_exceeded")
        == 2
    )
    assert value(samples, "streamworker_worker_events_total", event="reclaimed") == 6
    assert value(samples, "streamworker_worker_events_total", event="reaped") == 2
    reclaimed = [r for r in caplog.records if r.getMessage() == "task_reclaimed"]
    assert len(reclaimed) == 6
    await producer.aclose()


async def test_a_redis_restart_counts_errors_then_a_reconnect(settings: Settings) -> None:
    private = EmbeddedRedis(appendonly=True, appendfsync="always").start()
    try:
        registry = Registry()
        ran: list[str] = []

        @registry.handler("job")
        async def job(payload: dict[str, Any], ctx: TaskContext) -> None:
            ran.append(ctx.task_id)

        settings = settings.with_overrides(
            redis_url=private.url, metrics_port=free_port(), audit_enabled=False
        )
        port = settings.metrics_port
        obs = build_observability(settings, task_types=registry)
        async with running_worker(settings, registry, hooks=obs.task_hooks, metrics=obs.metrics):

            async def counted(name: str) -> bool:
                samples, _ = await scrape(port)
                return value(samples, name) > 0

            await anyio.to_thread.run_sync(private.kill)
            await wait_for(lambda: counted("streamworker_redis_errors_total"), interval=0.2)
            samples, _ = await scrape(port)
            assert value(samples, "task_queue_stats_up") == 0
            await anyio.to_thread.run_sync(private.start)
            await wait_for(lambda: counted("streamworker_redis_reconnects_total"), interval=0.2)
            producer = Producer.from_settings(settings)
            await producer.publish_many([TaskSpec(task_type="job", payload={}) for _ in range(5)])
            await wait_for(lambda: len(ran) == 5)
            await producer.aclose()
            await wait_for(lambda: counted("task_queue_stats_up"), interval=0.2)  # 2 s cache
    finally:
        private.close()


def test_the_per_task_series_expose_what_prometheus_client_would() -> None:
    # tasks_processed and the two histograms are kept as plain numbers (metrics.py) for the
    # hot path; a scrape must read exactly as prometheus_client's own Counter and Histogram.
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from streamworker.observability.metrics import (
        DURATION_BUCKETS,
        _TaskCounter,
        _TaskHistogram,
    )

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("runs", "Runs.", ["task_type", "outcome"], registry=theirs)
    histogram = Histogram("took", "Took.", ["task_type"], buckets=DURATION_BUCKETS, registry=theirs)
    fast_counter = _TaskCounter("runs", "Runs.", ["task_type", "outcome"], ours)
    fast_histogram = _TaskHistogram("took", "Took.", "task_type", DURATION_BUCKETS, ours)
    # every bound itself, values between and beyond them, zero, and a second label value
    values = [0.0, 0.0001, *DURATION_BUCKETS, *(b * 1.5 for b in DURATION_BUCKETS), 1e6]
    for i, v in enumerate(values):
        kind = ("a", "b")[i % 2]
        histogram.labels(kind).observe(v)
        fast_histogram.observe(kind, v)
        counter.labels(kind, "completed").inc()
        fast_counter.add((kind, "completed"))
    counter.labels("a", "failed").inc(3)
    fast_counter.add(("a", "failed"), 3)

    def lines(registry: CollectorRegistry) -> tuple[list[str], list[str]]:
        text = generate_latest(registry).decode().splitlines()
        created = [line.rpartition(" ")[0] for line in text if "_created{" in line]
        return [line for line in text if "_created{" not in line], created

    assert lines(ours) == lines(theirs)
    assert len(lines(ours)[1]) == 5  # 3 counter series, 2 histogram series
