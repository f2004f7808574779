"""What a handler raises to say how its task should end (CONTRACT.md §3).

- any other exception: a failed attempt, retried with exponential backoff until
  ``max_retries`` is used up, then dead-lettered with ``max_retries_exceeded``;
- :class:`Retry`: try again after the given number of seconds (counts as an attempt);
- :class:`PermanentError`: do not retry, dead-letter now with ``permanent_failure``;
- :class:`Defer`: not now, and not the task's fault (a circuit breaker is open, a rate limit
  is reached): run again after the given number of seconds without using up a retry.

Error *messages* may end up in ``dlq_error`` and ``last_error``: handlers must not put
payload contents or patient data in them.
"""

from __future__ import annotations

__all__ = [
    "Defer",
    "InvalidTask",
    "PermanentError",
    "Retry",
    "RetryableError",
    "StreamworkerError",
]


class StreamworkerError(Exception):
    """Base class of the errors this package raises."""


class RetryableError(StreamworkerError):
    """A transient failure: retry with backoff. (Any unexpected exception is treated the same.)"""


class Retry(RetryableError):
    """Retry after ``after`` seconds instead of the computed backoff."""

    def __init__(self, after: float, reason: str = "retry requested") -> None:
        if after < 0:
            raise ValueError("Retry(after=...) must be >= 0")
        self.after = float(after)
        super().__init__(reason)


class Defer(StreamworkerError):
    """Postpone the task by ``after`` seconds; the attempt does not count as a failure."""

    def __init__(self, after: float, reason: str = "deferred") -> None:
        if after < 0:
            raise ValueError("Defer(after=...) must be >= 0")
        self.after = float(after)
        super().__init__(reason)


class PermanentError(StreamworkerError):
    """The task can never succeed: dead-letter it at once, without further attempts."""


class InvalidTask(StreamworkerError, ValueError):
    """A task refused before it was written: unknown type, bad payload, bad option."""
