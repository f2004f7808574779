"""What every benchmark worker calls from its task function, whatever the framework.

The probe counts tasks inside the worker process and, once the expected number has run,
writes one JSON record to Redis (``bench:result``): wall time and process CPU from the first
task's start to the last task's end, the process's RSS, and the enqueue→start latencies. So no
per-task Redis command is added to what is measured, and CPU is the worker process's own
``getrusage`` (every thread), not a guess from outside.

Configured by environment variables the runner sets: ``BENCH_RESULT_URL``, ``BENCH_EXPECTED``
(tasks to wait for, warm-up included) and ``BENCH_WARMUP`` (tasks before measuring starts; the
probe writes ``bench:warm`` when they are done).

Several worker processes of one system (``BENCH_SHARED=1``, the drain with ``--processes 2``):
no process knows how many tasks it will get, so each reports its progress instead. The first
task a process receives waits (blocking that process) until the runner has seen every process
arrive and sets ``bench:go``, so no process drains alone while the others are still starting;
measuring starts there. A thread then writes the process's count, the time of its last finished
task and its CPU time to the ``bench:progress`` hash every 20 ms while they change; the runner
sums them.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from typing import Any

import redis

RESULT_KEY = "bench:result"
WARM_KEY = "bench:warm"
ARRIVED_KEY = "bench:arrived"
GO_KEY = "bench:go"
PROGRESS_KEY = "bench:progress"


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Probe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected = int(os.environ.get("BENCH_EXPECTED", "0"))
        self._warmup = int(os.environ.get("BENCH_WARMUP", "0"))
        self._url = os.environ.get("BENCH_RESULT_URL", "")
        self._started = 0
        self._done = 0
        self._t_first = 0.0
        self._cpu_first = 0.0
        self._latencies: list[float] = []
        self._shared = os.environ.get("BENCH_SHARED") == "1"
        self._t_last = 0.0

    def start(self, payload: Any) -> None:
        """At the start of a task: its enqueue time (``t`` in the payload) gives the latency."""
        if self._shared:
            self._start_shared()
            return
        now = time.time()
        with self._lock:
            self._started += 1
            if self._started == self._warmup + 1:
                self._t_first = now
                self._cpu_first = _cpu()
            if self._started > self._warmup and isinstance(payload, dict) and "t" in payload:
                self._latencies.append(now - float(payload["t"]))

    def finish(self) -> None:
        with self._lock:
            self._done += 1
            done = self._done
            if self._shared:
                self._t_last = time.time()
                return
        if self._warmup and done == self._warmup:
            self._write(WARM_KEY, {"pid": os.getpid(), "rss": rss_bytes()})
        if done == self._expected:
            now = time.time()
            self._write(
                RESULT_KEY,
                {
                    "pid": os.getpid(),
                    "tasks": self._expected - self._warmup,
                    "seconds": now - self._t_first,
                    "cpu_seconds": _cpu() - self._cpu_first,
                    "rss": rss_bytes(),
                    "latencies": self._latencies,
                },
            )

    def _start_shared(self) -> None:
        with self._lock:
            self._started += 1
            if self._started > 1:
                return
            client = redis.Redis.from_url(self._url)
            client.sadd(ARRIVED_KEY, os.getpid())
            while not client.exists(GO_KEY):
                time.sleep(0.001)
            client.close()
            self._t_first = time.time()
            self._cpu_first = _cpu()
        threading.Thread(target=self._report, daemon=True).start()

    def _report(self) -> None:
        client = redis.Redis.from_url(self._url)
        reported = -1
        while True:
            time.sleep(0.02)
            with self._lock:
                done, t_last = self._done, self._t_last
            if done == reported:
                continue
            record = {
                "done": done,
                "t_first": self._t_first,
                "t_last": t_last,
                "cpu_seconds": _cpu() - self._cpu_first,
                "rss": rss_bytes(),
            }
            client.hset(PROGRESS_KEY, str(os.getpid()), json.dumps(record))
            reported = done

    def _write(self, key: str, record: dict[str, Any]) -> None:
        client = redis.Redis.from_url(self._url)
        try:
            client.set(key, json.dumps(record))
        finally:
            client.close()


probe = Probe()
