"""What every benchmark worker calls from its task function, whatever the framework.

The probe counts tasks inside the worker process and, once the expected number has run,
writes one JSON record to Redis (``bench:result``): wall time and process CPU from the first
task's start to the last task's end, the process's RSS, and the enqueue→start latencies. So no
per-task Redis command is added to what is measured, and CPU is the worker process's own
``getrusage`` (every thread), not a guess from outside.

Configured by environment variables the runner sets: ``BENCH_RESULT_URL``, ``BENCH_EXPECTED``
(tasks to wait for, warm-up included) and ``BENCH_WARMUP`` (tasks before measuring starts; the
probe writes ``bench:warm`` when they are done).
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

    def start(self, payload: Any) -> None:
        """At the start of a task: its enqueue time (``t`` in the payload) gives the latency."""
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

    def _write(self, key: str, record: dict[str, Any]) -> None:
        client = redis.Redis.from_url(self._url)
        try:
            client.set(key, json.dumps(record))
        finally:
            client.close()


probe = Probe()
