"""Submit load against the real HTTP API: requests/s and latency percentiles.

Starts a private redis-server and ``streamworker api`` as a subprocess (its own process, as in
production), then keeps ``--concurrency`` clients submitting the seed's task for
``--seconds`` over keep-alive connections, and prints one JSON line with the results.
No worker runs: this measures the submit path (auth, validation, idempotency-free publish,
status write, estimate), not processing.

    .venv/bin/python -m bench.api_load --seconds 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx

from streamworker.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
BODY = {
    "task_type": "send_medication_reminder",
    "priority": "high",
    "payload": {
        "user_id": "123e4567-e89b-12d3-a456-426614174000",
        "medication_name": "Lisinopril",
        "dosage": "10mg",
        "reminder_time": "14:00",
    },
    "max_retries": 3,
    "timeout_seconds": 30,
}


async def load(url: str, seconds: float, concurrency: int) -> dict[str, object]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits, timeout=30
    ) as client:
        # warm-up: connections open, scripts loaded
        for _ in range(20):
            await client.post("/api/v1/tasks/submit", json=BODY)
        deadline = time.perf_counter() + seconds

        async def user() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/api/v1/tasks/submit", json=BODY)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(user)
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "errors": errors,
        "concurrency": concurrency,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with EmbeddedRedis() as redis_server:
        port = free_port()
        env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("STREAMWORKER_", "REDIS_"))
            },
            "REDIS_URL": redis_server.url,
            "API_TOKENS": TOKEN,
            "LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamworker",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("streamworker api did not start") from None
                    time.sleep(0.1)
            cpu_before = _process_cpu_seconds(server.pid)
            result = anyio.run(load, f"http://127.0.0.1:{port}", args.seconds, args.concurrency)
            server_cpu = _process_cpu_seconds(server.pid) - cpu_before
            # CPU the API process spent per request: the shared machine's load does not change
            # it, so 1000 / this is what one free core would serve.
            result["server_cpu_ms_per_request"] = round(server_cpu / result["requests"] * 1000, 2)  # type: ignore[operator]
        finally:
            server.terminate()
            server.wait(30)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
