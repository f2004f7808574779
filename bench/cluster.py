"""Drain throughput on one redis-server vs a 3-master Redis Cluster (issue 11).

``python -m bench.cluster`` (or ``make bench-cluster``): for each layout and 2 or 4
``streamworker worker`` processes, pre-publish TASKS no-op tasks spread over the partitions,
start the workers and time the drain from the first task taken to an empty backlog. Everything
(every redis-server, the workers, this script) shares the machine's cores: say so with the
numbers. Prints a Markdown table; ``--json`` writes the raw results too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from streamworker import Producer, Settings
from streamworker.broker import connect_to
from streamworker.embedded import EmbeddedCluster, EmbeddedRedis
from streamworker.producer import TaskSpec
from streamworker.stats import collect_stats

ROOT = Path(__file__).resolve().parent.parent
PRIORITIES = ("high", "normal", "low")


async def _publish(settings: Settings, tasks: int) -> None:
    producer = Producer.from_settings(settings)
    try:
        for start in range(0, tasks, 1000):
            await producer.publish_many(
                [
                    TaskSpec(task_type="bench_noop", payload={}, priority=PRIORITIES[n % 3])
                    for n in range(start, min(tasks, start + 1000))
                ]
            )
    finally:
        await producer.aclose()


async def _backlog(settings: Settings) -> int:
    redis = connect_to(settings)
    try:
        stats = await collect_stats(redis, settings.keyspace(), settings.group)
        return stats.backlog + stats.delayed
    finally:
        await redis.aclose()


def _env(settings: Settings, concurrency: int, n: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMWORKER_", "REDIS_"))}
    env.update(
        REDIS_URL=settings.redis_url or "",
        REDIS_CLUSTER="true" if settings.redis_cluster else "false",
        STREAM_PARTITIONS=str(settings.stream_partitions),
        STREAMWORKER_PREFIX=settings.prefix,
        STREAMWORKER_HANDLERS="bench.cluster_tasks",
        STREAMWORKER_CONSUMER=f"bench-{n}",
        WORKER_COUNT=str(concurrency),
        LOG_LEVEL="warning",
        PYTHONPATH=str(ROOT),
    )
    return env


def run_one(settings: Settings, processes: int, tasks: int, concurrency: int) -> dict[str, Any]:
    anyio.run(_publish, settings, tasks)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "streamworker", "worker"],
            env=_env(settings, concurrency, n),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(processes)
    ]
    began = time.monotonic()
    first = None
    try:
        while True:
            left = anyio.run(_backlog, settings)
            now = time.monotonic()
            if first is None and left < tasks:
                first = now
            if left == 0:
                break
            if now - began > 600:
                raise RuntimeError(f"not drained after 600 s ({left} left)")
            time.sleep(0.02)
        ended = time.monotonic()
    finally:
        cpu = 0.0
        for worker in workers:
            worker.terminate()
        for worker in workers:
            _, _, usage = os.wait4(worker.pid, 0)
            cpu += usage.ru_utime + usage.ru_stime
    drain = ended - (first or began)
    return {
        "tasks_per_second": round(tasks / drain),
        "drain_seconds": round(drain, 2),
        "with_start_seconds": round(ended - began, 2),
        "worker_cpu_us_per_task": round(cpu / tasks * 1e6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    with EmbeddedRedis() as node, EmbeddedCluster(masters=3) as cluster:
        layouts = [
            ("1 node", node.url, False, 1),
            (f"1 node, {args.partitions} partitions", node.url, False, args.partitions),
            (f"3-master cluster, {args.partitions} partitions", cluster.url, True, args.partitions),
        ]
        for label, url, clustered, partitions in layouts:
            for processes in (2, 4):
                settings = Settings(
                    redis_url=url,
                    redis_cluster=clustered,
                    stream_partitions=partitions,
                    prefix=f"b{len(results)}:",
                )
                runs = []
                for n in range(args.repeat):
                    settings = settings.with_overrides(prefix=f"b{len(results)}.{n}:")
                    runs.append(run_one(settings, processes, args.tasks, args.concurrency))
                runs.sort(key=lambda r: r["tasks_per_second"])
                row = {"layout": label, "processes": processes, **runs[len(runs) // 2]}
                row["runs_tasks_per_second"] = [r["tasks_per_second"] for r in runs]
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    print(
        f"\n{args.tasks} no-op tasks, WORKER_COUNT {args.concurrency}, {os.cpu_count()} cores, "
        f"median of {args.repeat} runs"
    )
    print("| layout | worker processes | tasks/s | drain s | incl. start s | worker CPU µs/task |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['layout']} | {r['processes']} | {r['tasks_per_second']:,} | "
            f"{r['drain_seconds']} | {r['with_start_seconds']} | {r['worker_cpu_us_per_task']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
