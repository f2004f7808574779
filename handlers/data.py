"""Data handlers."""

from __future__ import annotations

import math

from contracts import DataProcessing
from streamworker import PermanentError, TaskContext, handler


@handler("data_processing", contract=DataProcessing, timeout_seconds=120)
async def data_processing(payload: DataProcessing, ctx: TaskContext) -> float:
    numbers = payload.numbers
    if not all(math.isfinite(n) for n in numbers):
        raise PermanentError("numbers must be finite")
    if payload.operation == "sum":
        result = math.fsum(numbers)
    elif payload.operation == "average":
        result = math.fsum(numbers) / len(numbers)
    elif payload.operation == "min":
        result = min(numbers)
    else:
        result = max(numbers)
    ctx.logger.debug(
        "data_processed", extra={"count": len(numbers), "operation": payload.operation}
    )
    return result
