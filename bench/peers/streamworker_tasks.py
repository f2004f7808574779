"""The benchmark task for ``streamworker worker`` (STREAMWORKER_HANDLERS=this module)."""

from __future__ import annotations

from typing import Any

import anyio

from bench.probe import probe
from streamworker import TaskContext, handler


@handler("bench")
async def bench_task(payload: dict[str, Any], ctx: TaskContext) -> None:
    probe.start(payload)
    if payload.get("s"):
        await anyio.sleep(payload["s"])
    probe.finish()
