"""Retry delays: exponential backoff with jitter (CONTRACT.md §3)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    jitter: str = "full",
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the attempt after ``failures`` failed ones (``failures`` >= 1).

    The ceiling is ``min(cap, base * 2**(failures-1))``. ``full`` jitter draws uniformly in
    ``[0, ceiling]`` (spreads a burst of failures best); ``equal`` draws in
    ``[ceiling/2, ceiling]``, so each wait is at least as long as the one before.
    """
    ceiling = min(cap, base * 2.0 ** min(max(failures - 1, 0), 62))
    if jitter == "equal":
        return ceiling / 2 + rand() * ceiling / 2
    return rand() * ceiling
