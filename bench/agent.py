"""Publisher subprocess: ``python -m bench.agent PEER --mode single|many|paced ...``.

Publishing runs in its own process (as a real producer would), so the peers' client libraries
never share an interpreter. Prints one JSON line: tasks, wall seconds, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import anyio

from bench.peers import load


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _payload(i: int, sleep: float, stamp: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"i": i}
    if sleep:
        payload["s"] = sleep
    if stamp:
        payload["t"] = time.time()
    return payload


async def publish(args: argparse.Namespace) -> dict[str, float]:
    peer = load(args.peer)
    url = os.environ["REDIS_URL"]
    count = args.count
    async with peer.publisher(url) as pub:
        await anyio.sleep(0)
        t0, c0 = time.perf_counter(), _cpu()
        if args.mode == "many":
            for start in range(0, count, args.batch):
                end = min(count, start + args.batch)
                await pub.many([_payload(i, args.sleep, args.stamp) for i in range(start, end)])
        elif args.mode == "single":
            counter = iter(range(count))

            async def lane() -> None:
                for i in counter:
                    await pub.one(_payload(i, args.sleep, args.stamp))

            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(lane)
        else:  # paced: task i is published at t0 + i / rate, its enqueue time in the payload
            for i in range(count):
                delay = t0 + i / args.rate - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                await pub.one(_payload(i, args.sleep, True))
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"tasks": count, "seconds": seconds, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent")
    parser.add_argument("peer")
    parser.add_argument("--mode", choices=("single", "many", "paced"), default="many")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--stamp", action="store_true", help="put the enqueue time in payloads")
    args = parser.parse_args()
    print(json.dumps(anyio.run(publish, args)))


if __name__ == "__main__":
    main()
