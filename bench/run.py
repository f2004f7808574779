"""The benchmark runner: ``python -m bench [--quick] [--workloads A,B] [--peers streamworker,arq]``.

One private redis-server for the whole run (never 6379); every system runs the same workloads
side by side, repetition by repetition, each worker in its own subprocess started with the
system's own command line. Results: ``bench/results/latest.json`` and ``latest.md`` (and a
copy stamped with the date), and the table is printed.

Workloads (counts for the full run; ``--quick`` shrinks them and does one repetition):

- A drain: 20,000 no-op tasks published first, then one worker process drains them: tasks/s,
  worker CPU µs/task (the worker process's own getrusage, first task start to last task end)
  and redis-server CPU µs/task (``INFO cpu`` before the worker starts and after the last task).
- B publish: 20,000 tasks from one process: ``one`` call per task at concurrency 32, and
  batches of 1,000 where the system has a batch call.
- C latency: 1,000 tasks/s paced for 10 s into a running worker: enqueue→start p50/p95/p99/max
  (enqueue time travels in the payload), and whether all were delivered.
- D io-bound: 5,000 tasks that each sleep 10 ms, at concurrency 32 and 256.
- E memory: worker RSS and Redis ``used_memory`` before and after 200,000 tasks; for
  streamworker once more with statuses kept 10 s and the audit stream capped at 1,000, measured
  after Redis's own expiry has removed every key with a TTL (nothing deleted by the bench).

Concurrency (WORKER_COUNT for streamworker, max_jobs/concurrency/threads for the peers) is 64
for A, C and E, so a no-op drain is limited by the per-task cost, not by slots.

``--processes 1,2`` (the default) also drains A with 2 streamworker worker processes side by side
(each with WORKER_COUNT 64): tasks/s of both together, worker CPU µs/task summed over both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from bench.peers import ORDER, load
from bench.probe import ARRIVED_KEY, GO_KEY, PROGRESS_KEY, RESULT_KEY, WARM_KEY, rss_bytes
from streamworker.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DRAIN_CONCURRENCY = 64
#: Systems whose drain (A) is also run with several worker processes (``--processes``).
MULTI_PROCESS_PEERS = frozenset({"streamworker"})
#: Systems whose memory run (E) is repeated with short retention ("Et"), and its settings.
SHORT_RETENTION_PEERS = frozenset({"streamworker"})
SHORT_RETENTION = {"COMPLETED_TTL_SECONDS": "10", "AUDIT_STREAM_MAXLEN": "1000"}

FULL = {"A": 20_000, "B": 20_000, "C_rate": 1000, "C_seconds": 10, "D": 5_000, "E": 200_000}
QUICK = {"A": 3_000, "B": 3_000, "C_rate": 300, "C_seconds": 3, "D": 1_000, "E": 20_000}


class RunError(RuntimeError):
    pass


class Bench:
    def __init__(self, server: EmbeddedRedis, sizes: dict[str, int], log_dir: Path) -> None:
        self.url = server.url
        self.sizes = sizes
        self.client = redis.Redis.from_url(self.url)
        self.log_dir = log_dir
        self.profile = False
        self.env = {
            **os.environ,
            "REDIS_URL": self.url,
            "BENCH_RESULT_URL": self.url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }

    # -- processes --------------------------------------------------------------------------

    def publish(self, peer: str, count: int, *extra: str) -> dict[str, float]:
        argv = [sys.executable, "-m", "bench.agent", peer, "--count", str(count), *extra]
        done = subprocess.run(
            argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            raise RunError(f"{peer} publisher failed: {done.stderr.strip()[-800:]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def start_worker(
        self,
        peer: str,
        concurrency: int,
        expected: int,
        warmup: int,
        label: str,
        extra: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Start ``peer``'s worker; ``wrap`` is a command that runs it (e.g. under valgrind)."""
        argv, extra_env = load(peer).worker_argv(sys.executable, concurrency)
        if argv[1] == "-m":
            argv = [argv[0], "-m", "bench.quiet", *argv[2:]]
        if self.profile:
            # py-spy samples the worker; it writes its collapsed stacks when the worker exits.
            out = self.log_dir.parent / f"profile-{peer}-{label}.txt"
            wrap = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                str(out),
                "--",
            ]
        argv = [*wrap, *argv]
        env = {
            **self.env,
            **extra_env,
            "BENCH_CONCURRENCY": str(concurrency),
            "BENCH_EXPECTED": str(expected),
            "BENCH_WARMUP": str(warmup),
            **(extra or {}),
        }
        log = open(self.log_dir / f"{peer}-{label}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop_worker(self, proc: subprocess.Popen[bytes], worker_pid: int | None = None) -> None:
        # The worker's own process group (start_new_session): taskiq and dramatiq fork children.
        if self.profile and worker_pid and proc.poll() is None:
            os.kill(worker_pid, signal.SIGTERM)  # only the worker: py-spy then writes and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def wait_key(self, key: str, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.client.get(key)
            if raw:
                record: dict[str, Any] = json.loads(raw)
                return record
            _raise_if_exited([proc])
            time.sleep(0.02)
        raise RunError(f"timed out after {timeout:.0f}s waiting for {key}")

    def redis_cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def fresh(self) -> None:
        self.client.flushall()

    # -- workloads --------------------------------------------------------------------------

    def drain(self, peer: str) -> dict[str, Any]:
        n = self.sizes["A"]
        self.fresh()
        self.prepublish(peer, n)
        if self.profile:
            self.client.config_resetstat()  # Redis's own per-command CPU, for the drain only
        cpu0 = self.redis_cpu()
        proc = self.start_worker(peer, DRAIN_CONCURRENCY, n, 0, "A")
        result: dict[str, Any] = {}
        try:
            result = self.wait_key(RESULT_KEY, proc, 60 + n / 10)
            cpu1 = self.redis_cpu()
            if self.profile:
                self._save_commandstats(peer, n)
        finally:
            self.stop_worker(proc, result.get("pid"))
        return {
            "tasks_per_s": n / result["seconds"],
            "worker_us_per_task": 1e6 * result["cpu_seconds"] / n,
            "redis_us_per_task": 1e6 * (cpu1 - cpu0) / n,
        }

    def _save_commandstats(self, peer: str, n: int) -> None:
        """Redis CPU per task by command (INFO commandstats), beside the py-spy profile."""
        stats = self.client.info("commandstats")
        rows = sorted(
            ((name.removeprefix("cmdstat_"), v["calls"], v["usec"]) for name, v in stats.items()),
            key=lambda row: -row[2],
        )
        lines = [f"{'command':<24}{'calls/task':>12}{'us/task':>10}"]
        lines += [f"{name:<24}{calls / n:>12.3f}{usec / n:>10.2f}" for name, calls, usec in rows]
        out = self.log_dir.parent / f"commandstats-{peer}-A.txt"
        out.write_text("\n".join(lines) + "\n")

    def drain_processes(self, peer: str, processes: int) -> dict[str, Any]:
        """A with several worker processes: each blocks in its first task until all have
        one (``bench:go``), then reports progress; see bench/probe.py."""
        n = self.sizes["A"]
        self.fresh()
        self.prepublish(peer, n)
        procs = [
            self.start_worker(
                peer, DRAIN_CONCURRENCY, 0, 0, f"A{processes}p", {"BENCH_SHARED": "1"}
            )
            for _ in range(processes)
        ]
        try:
            deadline = time.monotonic() + 120
            while int(self.client.scard(ARRIVED_KEY)) < processes:
                _raise_if_exited(procs)
                if time.monotonic() > deadline:
                    raise RunError(f"only {self.client.scard(ARRIVED_KEY)} processes started")
                time.sleep(0.01)
            cpu0 = self.redis_cpu()
            self.client.set(GO_KEY, "1")
            deadline = time.monotonic() + 60 + n / 10
            while True:
                records = [json.loads(v) for v in self.client.hgetall(PROGRESS_KEY).values()]
                if sum(r["done"] for r in records) >= n:
                    break
                _raise_if_exited(procs)
                if time.monotonic() > deadline:
                    raise RunError(f"timed out after {sum(r['done'] for r in records)} tasks")
                time.sleep(0.02)
            cpu1 = self.redis_cpu()
        finally:
            for proc in procs:
                self.stop_worker(proc)
        seconds = max(r["t_last"] for r in records) - min(r["t_first"] for r in records)
        return {
            "processes": processes,
            "tasks_per_s": n / seconds,
            "worker_us_per_task": 1e6 * sum(r["cpu_seconds"] for r in records) / n,
            "redis_us_per_task": 1e6 * (cpu1 - cpu0) / n,
            "tasks_per_process": sorted(r["done"] for r in records),
        }

    def publish_rates(self, peer: str) -> dict[str, Any]:
        n = self.sizes["B"]
        self.fresh()
        single = self.publish(peer, n, "--mode", "single", "--concurrency", "32")
        out = {
            "single_c32_tasks_per_s": n / single["seconds"],
            "single_client_us_per_task": 1e6 * single["cpu_seconds"] / n,
        }
        if load(peer).BATCH:
            self.fresh()
            many = self.publish(peer, n, "--mode", "many", "--batch", "1000")
            out["many_b1000_tasks_per_s"] = n / many["seconds"]
            out["many_client_us_per_task"] = 1e6 * many["cpu_seconds"] / n
        return out

    def latency(self, peer: str) -> dict[str, Any]:
        rate, seconds = self.sizes["C_rate"], self.sizes["C_seconds"]
        n, warm = rate * seconds, 100
        self.fresh()
        proc = self.start_worker(peer, DRAIN_CONCURRENCY, warm + n, warm, "C")
        try:
            self.publish(peer, warm, "--mode", "paced", "--rate", str(rate))
            self.wait_key(WARM_KEY, proc, 120)
            self.publish(peer, n, "--mode", "paced", "--rate", str(rate))
            try:
                result = self.wait_key(RESULT_KEY, proc, seconds + 60)
            except RunError as exc:
                return {"delivered": False, "error": str(exc)}
        finally:
            self.stop_worker(proc)
        lat = sorted(1000 * x for x in result["latencies"])
        q = statistics.quantiles(lat, n=100, method="inclusive")
        return {
            "delivered": len(lat) == n,
            "tasks": n,
            "p50_ms": q[49],
            "p95_ms": q[94],
            "p99_ms": q[98],
            "max_ms": lat[-1],
        }

    def io_bound(self, peer: str, concurrency: int) -> dict[str, Any]:
        n = self.sizes["D"]
        self.fresh()
        self.prepublish(peer, n, "--sleep", "0.01")
        proc = self.start_worker(peer, concurrency, n, 0, f"D{concurrency}")
        try:
            # A system that loses tasks at high concurrency would otherwise hold the run up.
            result = self.wait_key(RESULT_KEY, proc, 60 + n / 20)
        finally:
            self.stop_worker(proc)
        return {"tasks_per_s": n / result["seconds"], "ideal_tasks_per_s": concurrency / 0.01}

    def memory(self, peer: str) -> dict[str, Any]:
        def after(pid: int) -> dict[str, Any]:
            time.sleep(2.0)
            rss1, mem1 = rss_bytes(pid), self.used_memory()
            keys_left = int(self.client.dbsize())
            expiring, mem2 = self._without_retained()
            return {
                "worker_rss_after": rss1,
                "redis_used_memory_after": mem1,
                "redis_keys_after": keys_left,  # e.g. status hashes or results kept by design
                "redis_keys_expiring": expiring,
                "redis_used_memory_without_retained": mem2,
            }

        return self._memory_run(peer, "E", None, after)

    def memory_expiring(self, peer: str) -> dict[str, Any]:
        """E again with short retention (``SHORT_RETENTION``): statuses expire 10 s after the
        task ends and the audit stream is capped at 1,000 entries. Nothing is deleted by the
        bench: once Redis's own expiry has removed every key with a TTL, ``used_memory`` is
        measured again."""

        def after(pid: int) -> dict[str, Any]:
            rss1 = rss_bytes(pid)
            started = time.monotonic()
            while self._expiring_keys() and time.monotonic() - started < 180:
                time.sleep(0.5)
            waited = time.monotonic() - started
            time.sleep(1.0)
            return {
                "worker_rss_after": rss1,
                "redis_used_memory_after": self.used_memory(),
                "redis_keys_after": int(self.client.dbsize()),
                "redis_keys_expiring": self._expiring_keys(),
                "expiry_wait_seconds": round(waited, 1),
            }

        return self._memory_run(peer, "Et", SHORT_RETENTION, after)

    def _memory_run(
        self,
        peer: str,
        label: str,
        extra: dict[str, str] | None,
        after: Callable[[int], dict[str, Any]],
    ) -> dict[str, Any]:
        """A worker warmed up with 1,000 tasks, measured, then sent the E tasks; ``after``
        measures once they are done (given the worker's pid)."""
        n, warm = self.sizes["E"], 1000
        self.fresh()
        proc = self.start_worker(peer, DRAIN_CONCURRENCY, warm + n, warm, label, extra=extra)
        try:
            self.prepublish(peer, warm)
            pid = int(self.wait_key(WARM_KEY, proc, 300)["pid"])
            time.sleep(1.0)  # let the warm-up's acks and deletes land
            before = {
                "worker_rss_before": rss_bytes(pid),
                "redis_used_memory_before": self.used_memory(),
            }
            self.prepublish(peer, n)
            self.wait_key(RESULT_KEY, proc, 120 + n / 20)
            return {"tasks": n, **before, **after(pid)}
        finally:
            self.stop_worker(proc)

    def _expiring_keys(self) -> int:
        db = self.client.info("keyspace").get("db0", {})
        return int(db.get("expires", 0)) if isinstance(db, dict) else 0

    def _without_retained(self) -> tuple[int, int]:
        """Delete what a system keeps by design for a while (keys with a TTL: statuses,
        results; streamworker's capped ``audit_events`` stream and its index) and measure
        again: what is left is what the run leaked, if anything."""
        expiring = 0
        keys = list(self.client.scan_iter(count=1000))
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for key in chunk:
                pipe.ttl(key)
            doomed = [k for k, ttl in zip(chunk, pipe.execute(), strict=True) if ttl > 0]
            if doomed:
                self.client.delete(*doomed)
                expiring += len(doomed)
        self.client.delete("audit_events", "audit_events:index")
        time.sleep(0.5)
        return expiring, self.used_memory()

    def prepublish(self, peer: str, n: int, *extra: str) -> None:
        if load(peer).BATCH:
            self.publish(peer, n, "--mode", "many", "--batch", "1000", *extra)
        else:
            self.publish(peer, n, "--mode", "single", "--concurrency", "32", *extra)


def _raise_if_exited(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RunError(f"worker exited with {proc.returncode} (see bench/results/logs)")


# -- reporting --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    return {
        "cpu": model,
        "cores": cores,
        "note": (
            f"{cores} cores shared by redis-server, the worker and the publisher "
            "(and other jobs on this host): absolute numbers are low, compare rows"
        ),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def versions(peers: list[str], client: redis.Redis) -> dict[str, str]:
    out = {"redis-server": str(client.info("server")["redis_version"])}
    for dist in ("redis", "hiredis", "msgspec", "anyio"):
        out[dist] = metadata.version(dist)
    for peer in peers:
        dist = load(peer).DISTRIBUTION
        out[dist] = metadata.version(dist)
        if peer == "taskiq":
            out["taskiq-redis"] = metadata.version("taskiq-redis")
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1] if runs else {}
    out: dict[str, Any] = {}
    for key, value in ok[0].items():
        if isinstance(value, bool):
            out[key] = all(r.get(key) for r in ok)
        elif isinstance(value, int | float):
            out[key] = statistics.median(r[key] for r in ok if key in r)
        else:
            out[key] = value
    return out


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def markdown(report: dict[str, Any]) -> str:
    medians = report["medians"]
    lines = [
        f"Run {report['date']} · {report['mode']} · median of {report['repetitions']} "
        f"(once: {', '.join(report['once']) or 'none'}) · sizes {report['sizes']} "
        f"· {report['machine']['cpu']} · {report['machine']['note']}",
        "",
        "| system | A drain tasks/s | A worker µs/task | A redis µs/task | B publish c32 tasks/s "
        "| B publish_many tasks/s | C p50 / p95 / p99 / max ms | D sleep c32 tasks/s "
        "| D sleep c256 tasks/s | E worker RSS MB before→after | E redis MB before→after |",
        "|---" * 11 + "|",
    ]
    for peer in report["peers"]:
        m = medians.get(peer, {})
        a, b, c = m.get("A", {}), m.get("B", {}), m.get("C", {})
        d32, d256, e = m.get("D32", {}), m.get("D256", {}), m.get("E", {})
        if c.get("p50_ms") is not None:
            lat = " / ".join(_num(c[k], 1) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
            lat += "" if c.get("delivered") else " (not all delivered)"
        else:
            lat = "failed" if c else "-"
        rss = f"{_mb(e.get('worker_rss_before'))}→{_mb(e.get('worker_rss_after'))}" if e else "-"
        mem = (
            f"{_mb(e.get('redis_used_memory_before'))}→{_mb(e.get('redis_used_memory_after'))}"
            f" ({e.get('redis_keys_after', '?')} keys; "
            f"{_mb(e.get('redis_used_memory_without_retained'))} without the "
            f"{e.get('redis_keys_expiring', '?')} with a TTL and the audit stream)"
            if e
            else "-"
        )
        name = getattr(load(peer), "LABEL", peer)
        lines.append(
            f"| {name} | {_num(a.get('tasks_per_s'))} | {_num(a.get('worker_us_per_task'), 1)} "
            f"| {_num(a.get('redis_us_per_task'), 1)} | {_num(b.get('single_c32_tasks_per_s'))} "
            f"| {_num(b.get('many_b1000_tasks_per_s'))} | {lat} "
            f"| {_num(d32.get('tasks_per_s'))} | {_num(d256.get('tasks_per_s'))} | {rss} | {mem} |"
        )
    for peer in report["peers"]:
        for label, m in sorted(medians.get(peer, {}).items()):
            if not (label.startswith("A") and label.endswith("p")):
                continue
            count = label[1:-1]
            lines.append(
                f"| {peer}, {count} processes | {_num(m.get('tasks_per_s'))} "
                f"| {_num(m.get('worker_us_per_task'), 1)} (sum) "
                f"| {_num(m.get('redis_us_per_task'), 1)} |" + " - |" * 7
            )
    for peer in report["peers"]:
        e = medians.get(peer, {}).get("Et")
        if not e or "error" in e:
            continue
        lines.append(
            f"| {peer}, statuses kept 10 s, audit stream 1,000 |"
            + " - |" * 8
            + f" {_mb(e.get('worker_rss_before'))}→{_mb(e.get('worker_rss_after'))} "
            f"| {_mb(e.get('redis_used_memory_before'))}→{_mb(e.get('redis_used_memory_after'))}"
            f" ({e.get('redis_keys_after', '?')} keys, after Redis expired the rest in "
            f"{e.get('expiry_wait_seconds', '?')} s) |"
        )
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    if report.get("skipped"):
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    if report["errors"]:
        lines += ["", "Errors:"] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--workloads", default="A,B,C,D,E", help="comma-separated, e.g. A,C")
    parser.add_argument("--peers", default=",".join(ORDER), help="comma-separated systems")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument(
        "--once", default="E", help="workloads run a single repetition (default: E)"
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=N",
        help="override a count, e.g. --size E=50000 (keys: A B C_rate C_seconds D E)",
    )
    parser.add_argument(
        "--processes",
        default="1,2",
        help="worker process counts for the A drain of "
        + ", ".join(sorted(MULTI_PROCESS_PEERS))
        + " (default 1,2: one row each)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample the A drain workers with py-spy"
    )
    args = parser.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for peer in peers:
        load(peer)
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(workloads) - set("ABCDE"):
        parser.error(f"unknown workloads {sorted(unknown)}; expected A, B, C, D, E")
    sizes = dict(QUICK if args.quick else FULL)
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in sizes or not value.isdigit() or int(value) < 1:
            parser.error(f"--size {item!r}: expected KEY=N with KEY in {', '.join(sizes)}")
        sizes[key] = int(value)
    try:
        process_counts = sorted({int(p) for p in args.processes.split(",") if p.strip()})
    except ValueError:
        parser.error(f"--processes {args.processes!r}: expected counts such as 1,2")
    if not process_counts or process_counts[0] < 1:
        parser.error("--processes: counts must be 1 or more")
    reps = args.repetitions or (1 if args.quick else 3)
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {} for p in peers}
    errors: list[str] = []
    notes: dict[str, str] = {}
    with EmbeddedRedis() as server:
        bench = Bench(server, sizes, log_dir)
        bench.profile = args.profile
        report: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "repetitions": reps,
            "sizes": sizes,
            "drain_concurrency": DRAIN_CONCURRENCY,
            "processes": process_counts,
            "machine": machine(),
            "versions": versions(peers, bench.client),
            "peers": peers,
        }
        once = {w.strip().upper() for w in args.once.split(",") if w.strip()}
        report["once"] = sorted(once)
        plan: list[tuple[str, int, Any]] = []
        for w in workloads:
            if w == "A":
                if 1 in process_counts:
                    plan.append(("A", 1 if "A" in once else reps, bench.drain))
                for count in process_counts:
                    if count > 1:
                        plan.append(
                            (
                                f"A{count}p",
                                1 if "A" in once else reps,
                                lambda p, c=count: bench.drain_processes(p, c),
                            )
                        )
            elif w == "B":
                plan.append(("B", 1 if "B" in once else reps, bench.publish_rates))
            elif w == "C":
                plan.append(("C", 1 if "C" in once else reps, bench.latency))
            elif w == "D":
                n = 1 if "D" in once else reps
                plan.append(("D32", n, lambda p: bench.io_bound(p, 32)))
                plan.append(("D256", n, lambda p: bench.io_bound(p, 256)))
            elif w == "E":
                plan.append(("E", 1 if "E" in once else reps, bench.memory))
                plan.append(("Et", 1 if "E" in once else reps, bench.memory_expiring))
        for label, count, fn in plan:
            for rep in range(count):
                for peer in peers:  # side by side: every system once per repetition
                    if label[0] not in load(peer).WORKLOADS:
                        continue
                    if label.endswith("p") and peer not in MULTI_PROCESS_PEERS:
                        continue
                    if label == "Et" and peer not in SHORT_RETENTION_PEERS:
                        continue
                    skip = getattr(load(peer), "SKIP", {}).get(label)
                    if skip:
                        notes[f"{label} {peer}"] = skip
                        continue
                    started = time.monotonic()
                    try:
                        result = fn(peer)
                    except (RunError, subprocess.TimeoutExpired, redis.RedisError) as exc:
                        result = {"error": str(exc)}
                        errors.append(f"{label} {peer} rep {rep + 1}: {exc}")
                    runs[peer].setdefault(label, []).append(result)
                    took = time.monotonic() - started
                    print(f"[{label} {rep + 1}/{count}] {peer}: {json.dumps(result)} ({took:.0f}s)")
                    sys.stdout.flush()
    report["runs"] = runs
    report["medians"] = {p: {k: _median(v) for k, v in runs[p].items()} for p in peers}
    report["errors"] = errors
    report["skipped"] = notes
    table = markdown(report)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in ("latest", stamp):
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(table)
    print()
    print(table)
    return 0
