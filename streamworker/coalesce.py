"""Group commit for single publishes: concurrent calls share round trips.

A call that finds no write in flight writes at once, alone, so a lone publisher waits for
nothing. Calls that arrive while a write is in flight queue up; when it returns, the first of
them becomes the leader and writes everything queued as one batch (one pipelined round trip).
So the batches grow with the concurrency by themselves: 32 concurrent publishers cost about
one round trip per 32 tasks instead of one each, with no timer and no background task.

A write runs shielded from the leader's cancellation (it holds the other callers' tasks; the
client's socket timeout bounds it). A caller cancelled while it waits is dropped from the next
batch if its turn has not come; once written, its task stays written (as with any publish
cancelled after sending). An error of the write is raised to every caller of that batch.

The waits are bare asyncio futures, as in ``worker/handoff.py``: the producer runs on the
asyncio event loop anyway (redis-py's asyncio client).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")

_LEAD = object()  # the result that makes a waiting caller the next leader


class Coalescer(Generic[T, R]):
    def __init__(
        self, write: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_batch: int = 500
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._waiting: deque[tuple[T, asyncio.Future[object]]] = deque()
        self._busy = False  # a leader is writing, or has been chosen and is about to
        self.batches = 0  # writes made (the tests count them)

    async def submit(self, item: T) -> R:
        """Write ``item`` (alone or with others) and return its result."""
        if self._busy:
            turn: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, turn))
            try:
                outcome = await turn
            except BaseException:
                chosen = turn.done() and not turn.cancelled() and turn.exception() is None
                if chosen and turn.result() is _LEAD:
                    self._hand_on()  # cancelled just as it was made leader: choose another
                raise
            if outcome is not _LEAD:
                return outcome  # type: ignore[return-value]
        else:
            self._busy = True
        return await self._lead(item)

    async def _lead(self, item: T) -> R:
        batch: list[tuple[T, asyncio.Future[object] | None]] = [(item, None)]
        while self._waiting and len(batch) < self._max_batch:
            entry = self._waiting.popleft()
            if not entry[1].done():  # done here means its caller was cancelled
                batch.append(entry)
        try:
            with anyio.CancelScope(shield=True):
                results = await self._write([entry[0] for entry in batch])
                self.batches += 1
        except BaseException as exc:
            for _, turn in batch[1:]:
                if turn is not None and not turn.done():
                    if isinstance(exc, Exception):
                        turn.set_exception(exc)
                    else:
                        turn.cancel()
            raise
        finally:
            self._hand_on()
        for (_, turn), result in zip(batch[1:], results[1:], strict=True):
            if turn is not None and not turn.done():
                turn.set_result(result)
        return results[0]

    def _hand_on(self) -> None:
        """Make the first caller still waiting the next leader, or mark the writer idle."""
        while self._waiting:
            _, turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(_LEAD)
                return
        self._busy = False
