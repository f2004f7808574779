"""The services a handler may use, built once by the worker from Settings.

Handlers reach them as ``ctx.services``; they never read the environment or import Redis.
Every send goes through :meth:`Services.deliver`, which puts the channel's safeguards around
it in this order: done once per task (``SideEffects``), the channel's rate limit, its circuit
breaker, then the send itself, whose outcome feeds the breaker.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis

from ..errors import PermanentError
from ..keyspace import Keyspace
from ..resilience import BreakerPolicy, CircuitBreaker, RateLimiter, SideEffects, metrics
from ..settings import Settings
from ..stats import QueueStats, collect_stats
from .directory import Directory
from .email import EmailChannel
from .errors import ChannelUnavailable, NotConfigured
from .notify import NotificationServiceClient
from .sms import SmsGateway
from .webhook import WebhookSender

__all__ = ["Services"]

T = TypeVar("T")

log = logging.getLogger("streamworker.channels")


class Services:
    def __init__(self, settings: Settings, redis: aioredis.Redis, keys: Keyspace) -> None:
        self.settings = settings
        self.keys = keys
        self._redis = redis
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.http_timeout_seconds),
            follow_redirects=False,  # a redirect could lead a webhook past the SSRF guard
        )
        self.side_effects = SideEffects(
            redis,
            keys,
            done_ttl_seconds=settings.completed_ttl_seconds,
            # Past the visibility timeout another consumer may run the task: a claim older
            # than that belongs to an attempt that is gone.
            lease_seconds=settings.visibility_timeout_seconds,
        )
        self.breaker_policy = BreakerPolicy(
            failure_threshold=settings.breaker_failure_threshold,
            failure_ratio=settings.breaker_failure_ratio,
            min_calls=settings.breaker_min_calls,
            window_seconds=settings.breaker_window_seconds,
            cooldown_seconds=settings.breaker_cooldown_seconds,
            probe_seconds=max(1.0, settings.http_timeout_seconds + 1.0),
        )
        self._breakers: dict[str, CircuitBreaker] = {}
        self._limiters = {
            name: RateLimiter(
                redis,
                keys.rate_limit(name),
                name,
                rate,
                # a send cannot take longer than the client's timeout
                lease_seconds=settings.http_timeout_seconds + 1.0,
            )
            for name, rate in settings.rate_limits
        }
        self.directory = Directory(settings, self.http)
        self.webhooks = WebhookSender(
            self.http, settings.webhook_secret, settings.webhook_allow_private
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- channels (built on first use, so an unconfigured one costs nothing) ---------------

    @cached_property
    def _email(self) -> EmailChannel | NotConfigured:
        try:
            return EmailChannel(self.settings)
        except NotConfigured as exc:
            return exc

    @property
    def email(self) -> EmailChannel:
        return _configured(self._email)

    @cached_property
    def _sms(self) -> SmsGateway | NotConfigured:
        try:
            return SmsGateway(self.settings, self.http)
        except NotConfigured as exc:
            return exc

    @property
    def sms(self) -> SmsGateway:
        return _configured(self._sms)

    @cached_property
    def _push(self) -> NotificationServiceClient | NotConfigured:
        try:
            return NotificationServiceClient(self.settings, self.http)
        except NotConfigured as exc:
            return exc

    @property
    def push(self) -> NotificationServiceClient:
        return _configured(self._push)

    # -- safeguards ------------------------------------------------------------------------

    def breaker(self, name: str, *, channel: str | None = None) -> CircuitBreaker:
        found = self._breakers.get(name)
        if found is None:
            found = CircuitBreaker(
                self._redis, self.keys.breaker(name), channel or name, self.breaker_policy
            )
            self._breakers[name] = found
        return found

    def limiter(self, channel: str) -> RateLimiter | None:
        return self._limiters.get(channel)

    @asynccontextmanager
    async def once(self, scope: str, task_id: str) -> AsyncIterator[bool]:
        async with self.side_effects.once(scope, task_id) as first:
            yield first

    async def deliver(
        self,
        channel: str,
        send: Callable[[], Awaitable[object]],
        *,
        task_id: str,
        scope: str | None = None,
        breaker: str | None = None,
    ) -> bool:
        """Send once per task through ``channel``'s safeguards; False if already sent.

        Raises Defer (breaker open, rate limit reached, another attempt mid-send),
        ChannelUnavailable (retry), Retry (the service asked for a pause) or PermanentError.
        """
        async with self.side_effects.once(scope or channel, task_id) as first:
            if not first:
                metrics.DELIVERIES.labels(channel, "duplicate_skipped").inc()
                return False
            guard = self.breaker(breaker or channel, channel=channel)
            limiter = self._limiters.get(channel)
            try:
                if limiter is None:
                    await guard.acquire()
                    await send()
                else:
                    async with limiter.slot():
                        await guard.acquire()
                        await send()
            except ChannelUnavailable:
                metrics.DELIVERIES.labels(channel, "failed").inc()
                await guard.record_failure()
                raise
            except PermanentError:
                # The service answered, so it is up: a refusal is the task's fault.
                metrics.DELIVERIES.labels(channel, "refused").inc()
                await guard.record_success()
                raise
            await guard.record_success()
            metrics.DELIVERIES.labels(channel, "sent").inc()
        return True

    @staticmethod
    def host_breaker(host: str) -> str:
        """Breaker name of one webhook receiver: per host, hashed (no host name in Redis keys
        or logs)."""
        return "webhook:" + hashlib.sha256(host.encode()).hexdigest()[:16]

    # -- task bookkeeping ------------------------------------------------------------------

    async def mark_skipped(self, task_id: str, task_type: str, reason: str) -> None:
        """Record that a task completed without doing its work (e.g. NOTIFICATION_ENABLED=
        false): ``outcome=skipped`` and ``last_error`` in its status, a metric, a log line."""
        metrics.SKIPPED.labels(task_type).inc()
        log.info(
            "task_skipped",
            extra={"task_id": task_id, "task_type": task_type, "reason": reason},
        )
        if not self.settings.track_status:
            return
        key = self.keys.status(task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"outcome": "skipped", "last_error": f"skipped: {reason}"})
        pipe.expire(key, self.settings.completed_ttl_seconds)
        await pipe.execute()

    async def task_stats(self) -> QueueStats:
        return await collect_stats(self._redis, self.keys, self.settings.group)

    async def dead_letter_counts(
        self, start_ms: int | None = None, end_ms: int | None = None, *, limit: int = 100_000
    ) -> dict[str, Any]:
        """Dead letters failed between the two times (entry ids are failure times), counted
        by reason and by task type; reads at most ``limit`` entries, in pages."""
        by_reason: Counter[str] = Counter()
        by_type: Counter[str] = Counter()
        end = str(end_ms) if end_ms is not None else "+"
        seen = 0
        for stream in self.keys.dead_letter_streams:  # one per partition
            cursor = str(start_ms) if start_ms is not None else "-"
            while seen < limit:
                page = await self._redis.xrange(stream, cursor, end, count=min(1000, limit - seen))
                if not page:
                    break
                for _entry_id, fields in page:
                    by_reason[_text((fields or {}).get(b"dlq_reason"))] += 1
                    by_type[_text((fields or {}).get(b"task_type"))] += 1
                seen += len(page)
                cursor = "(" + _text(page[-1][0])
        return {
            "total": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
            "by_task_type": dict(sorted(by_type.items())),
            "truncated": seen >= limit,
        }

    # -- file areas ------------------------------------------------------------------------

    def export_dir(self) -> Path:
        if not self.settings.export_dir:
            raise PermanentError("exports are not configured (set EXPORT_DIR)")
        path = Path(self.settings.export_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()

    def cleanup_root(self) -> Path:
        if not self.settings.cleanup_root:
            raise PermanentError("file cleanup is not configured (set CLEANUP_ROOT)")
        root = Path(self.settings.cleanup_root).resolve()
        if not root.is_dir():
            raise PermanentError("CLEANUP_ROOT is not a directory")
        return root


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "unknown" if value is None else str(value)


def _configured(value: T | NotConfigured) -> T:
    if isinstance(value, NotConfigured):
        # Not the task's fault, but no retry will help before the operator sets the variable:
        # dead-letter it with a reason that names what to set, and replay it afterwards.
        raise PermanentError(str(value))
    return value
