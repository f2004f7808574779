"""The no-op task of ``bench.cluster`` (STREAMWORKER_HANDLERS=this module)."""

from __future__ import annotations

from typing import Any

from streamworker import TaskContext, handler


@handler("bench_noop")
async def bench_noop(payload: dict[str, Any], ctx: TaskContext) -> None:
    return None
