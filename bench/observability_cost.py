"""Hot-path cost of the observability hooks: ``python -m bench.observability_cost [--tasks N]``.

Drains N no-op tasks (published first) with one in-process worker (WORKER_COUNT 64, as in the
suite's workload A) under each configuration, repetitions interleaved so machine load hits all
alike, and prints tasks/s, worker CPU µs/task (getrusage of this process: the event loop and
the exporter's thread), and redis-server CPU µs/task (``INFO cpu``). Medians of the repetitions.

Configurations: ``bare`` (no hook), ``logging`` (the JSON logging hook at LOG_LEVEL=warning,
what every worker has), ``+metrics``, ``+tracing`` (OTLP/HTTP to a local receiver in a
subprocess), ``+audit`` (audit stream), and ``all`` (logging at info to /dev/null, metrics,
tracing, audit).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import anyio

from streamworker import Producer, Registry, Settings, TaskContext, TaskSpec, Worker
from streamworker.broker import connect
from streamworker.embedded import EmbeddedRedis, free_port
from streamworker.observability import build_observability
from streamworker.observability.logging import JsonFormatter

CONFIGS: dict[str, dict[str, Any]] = {
    "bare": {},
    "logging": {"logging": True},
    "+metrics": {"logging": True, "metrics": True},
    "+tracing": {"logging": True, "tracing": True},
    "+metrics+tracing": {"logging": True, "metrics": True, "tracing": True},
    "+audit": {"logging": True, "audit": True},
    "all (info logs)": {
        "logging": True,
        "metrics": True,
        "tracing": True,
        "audit": True,
        "log_level": logging.INFO,
    },
}

_RECEIVER = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
        def log_message(self, *a): pass
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)

registry = Registry()


@registry.handler("noop")
async def noop(payload: dict[str, Any], ctx: TaskContext) -> None:
    return None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _redis_cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def drain(redis_url: str, otlp: str, config: dict[str, Any], tasks: int) -> dict[str, float]:
    settings = Settings(
        redis_url=redis_url,
        prefix=f"obsbench{uuid.uuid4().hex[:8]}:",
        consumer="bench",
        worker_count=64,
        read_block_ms=100,
        audit_enabled=bool(config.get("audit")),
        otel_exporter_otlp_endpoint=otlp if config.get("tracing") else None,
    )
    root = logging.getLogger()
    root.handlers[:] = []
    if config.get("logging"):
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
        handler.setFormatter(JsonFormatter("background-tasks", settings.consumer))
        root.handlers[:] = [handler]
    root.setLevel(config.get("log_level", logging.WARNING))
    redis = connect(redis_url)
    obs = build_observability(
        settings, task_types=registry, redis=redis, metrics=bool(config.get("metrics"))
    )
    hooks = obs.task_hooks if config.get("logging") else []
    producer = Producer.from_settings(settings, redis=redis)
    for i in range(0, tasks, 1000):
        await producer.publish_many(
            [TaskSpec(task_type="noop", payload={"i": j}) for j in range(i, min(tasks, i + 1000))]
        )
    worker = Worker(settings, registry=registry, redis=redis, hooks=hooks, metrics=obs.metrics)
    async with obs.running():
        redis_before = await _redis_cpu(redis)
        cpu_before, wall_before = _cpu(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            while worker.completed_runs < tasks:
                await anyio.sleep(0.005)
            wall = time.perf_counter() - wall_before
            cpu = _cpu() - cpu_before
            redis_cpu = await _redis_cpu(redis) - redis_before
            worker.stop()
    keys = [k async for k in redis.scan_iter(match=f"{settings.prefix}*", count=10000)]
    for i in range(0, len(keys), 1000):
        await redis.unlink(*keys[i : i + 1000])
    await redis.aclose()
    return {
        "tasks_per_s": tasks / wall,
        "cpu_us": cpu / tasks * 1e6,
        "redis_cpu_us": redis_cpu / tasks * 1e6,
    }


async def hook_cost(redis_url: str, otlp: str, config: dict[str, Any], n: int) -> float:
    """CPU µs per task of the hooks alone: before + after called directly, plus the
    background work they cause (span export, audit delivery), no queue traffic."""
    from streamworker.hooks import Outcome, TaskEnd, TaskHooks
    from streamworker.wire import Task

    settings = Settings(
        redis_url=redis_url,
        prefix=f"obsbench{uuid.uuid4().hex[:8]}:",
        consumer="bench",
        audit_enabled=bool(config.get("audit")),
        audit_buffer_size=n * 2,
        otel_exporter_otlp_endpoint=otlp if config.get("tracing") else None,
    )
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(JsonFormatter("background-tasks", settings.consumer))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(config.get("log_level", logging.WARNING))
    redis = connect(redis_url)
    obs = build_observability(
        settings, task_types=registry, redis=redis, metrics=bool(config.get("metrics"))
    )
    hooks = TaskHooks(obs.task_hooks if config.get("logging") else [])
    task = Task(
        task_id=str(uuid.uuid4()),
        task_type="noop",
        payload=b"{}",
        priority="normal",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    end = TaskEnd(Outcome.COMPLETED, 0.0005)
    before = _cpu()
    for _ in range(n):
        now = time.time()
        tokens = hooks.before(task, now, now - 0.01)
        hooks.after(task, tokens, end)
    for sink in obs.sinks:
        await sink._drain()
    if obs.tracer_provider is not None:
        obs.tracer_provider.force_flush()
    cost = (_cpu() - before) / n * 1e6
    async with obs.running():
        pass
    keys = settings.keyspace()
    await redis.delete(keys.audit_events, keys.audit_index)
    await redis.aclose()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--hooks-only", action="store_true", help="only the direct hook cost")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",")]
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(port)])
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        with EmbeddedRedis() as server:
            print("\nhook cost alone (CPU µs per task, median of 5 x 20,000 calls)")
            print("| configuration | µs/task |\n|---|---:|")
            for name in names:
                costs = [
                    anyio.run(
                        hook_cost, server.url, f"http://127.0.0.1:{port}", CONFIGS[name], 20_000
                    )
                    for _ in range(5)
                ]
                print(f"| {name} | {statistics.median(costs):,.1f} |", flush=True)
            if args.hooks_only:
                return
            for rep in range(args.repeat):
                for name in names:
                    result = anyio.run(
                        drain, server.url, f"http://127.0.0.1:{port}", CONFIGS[name], args.tasks
                    )
                    results[name].append(result)
                    print(
                        f"rep {rep + 1} {name:<18} "
                        + " ".join(f"{k}={v:,.1f}" for k, v in result.items()),
                        file=sys.stderr,
                    )
    finally:
        receiver.terminate()
        receiver.wait(10)
    base = statistics.median(r["cpu_us"] for r in results[names[0]])
    print(f"\n{args.tasks:,} no-op tasks, WORKER_COUNT 64, median of {args.repeat}")
    print(f"| configuration | tasks/s | worker CPU µs/task | vs {names[0]} | redis CPU µs/task |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        rs = results[name]
        rate = statistics.median(r["tasks_per_s"] for r in rs)
        cpu = statistics.median(r["cpu_us"] for r in rs)
        rcpu = statistics.median(r["redis_cpu_us"] for r in rs)
        print(
            f"| {name} | {rate:,.0f} | {cpu:,.1f} | {(cpu / base - 1) * 100:+.1f} % | {rcpu:,.1f} |"
        )


if __name__ == "__main__":
    main()
