"""CPU instructions per task of the streamworker drain, counted by valgrind's callgrind.

``python -m bench.instructions [--small 500] [--large 2500] [--repeat 2] [KEY=VALUE ...]``

Seconds of CPU per task vary by a third from one run to the next on a shared VM; the number of
instructions the worker executes does not (about ±4 % here, from run to run, because batch
sizes depend on timing). So a change to the hot path can be judged by this count where a timed
drain cannot tell it from noise.

Each measurement publishes N no-op tasks (``publish_many``) to a fresh private redis-server,
starts ``streamworker worker`` as the drain workload does (``Bench.start_worker``, concurrency
64) under callgrind, stops it once the bench probe has seen all N tasks, and reads callgrind's
instruction total. The worker's
start-up and shutdown cost the same for any N, so the count per task is the difference between
a large and a small run divided by the difference in tasks. Under callgrind the worker runs
about 50 times slower while Redis does not, so batches are shaped somewhat differently than in
a real drain: compare counts with each other, not with the drain's microseconds.

Extra ``KEY=VALUE`` arguments are set in the worker's environment, e.g. ``TRACK_STATUS=false
AUDIT_ENABLED=false``. Needs ``valgrind`` (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
from pathlib import Path

from bench.probe import RESULT_KEY
from bench.run import DRAIN_CONCURRENCY, RESULTS, Bench
from streamworker.embedded import EmbeddedRedis

PEER = "streamworker"


def count(tasks: int, extra_env: dict[str, str], out_dir: Path) -> int:
    """Instructions callgrind counted in a worker that ran ``tasks`` tasks, start to stop."""
    out = out_dir / f"callgrind-{tasks}.out"
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis() as server:
        bench = Bench(server, {}, log_dir)
        bench.prepublish(PEER, tasks)
        worker = bench.start_worker(
            PEER,
            DRAIN_CONCURRENCY,
            tasks,
            0,
            "instructions",
            extra=extra_env,
            wrap=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        )
        try:
            bench.wait_key(RESULT_KEY, worker, 3600)
        finally:
            # Not Bench.stop_worker: its SIGKILL after 15 s would come before callgrind (50x
            # slower) has stopped the worker and written its count.
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=600)
            bench.client.close()
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no instruction total in {out} (see {log_dir}/{PEER}-instructions.log)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--small", type=int, default=500, help="tasks in the small run")
    parser.add_argument("--large", type=int, default=2500, help="tasks in the large run")
    parser.add_argument("--repeat", type=int, default=2, help="measurements (median shown)")
    parser.add_argument("env", nargs="*", metavar="KEY=VALUE", help="worker environment")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian package valgrind)")
    if not 0 < args.small < args.large:
        parser.error("expected 0 < --small < --large")
    extra: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"{item!r}: expected KEY=VALUE")
        extra[key] = value
    per_task: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            small = count(args.small, extra, Path(tmp))
            large = count(args.large, extra, Path(tmp))
            per_task.append((large - small) / (args.large - args.small))
            print(f"{per_task[-1]:,.0f} instructions per task", flush=True)
    print(f"median of {len(per_task)}: {statistics.median(per_task):,.0f} instructions per task")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
