"""The worker process: starts its components in order in one task group and stops them in
reverse, in two phases (CONTRACT.md §3): stop reading, then let in-flight handlers finish
within ``SHUTDOWN_GRACE_SECONDS``; whatever did not finish stays pending for the next consumer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
import redis.asyncio as aioredis

from ..broker import Broker, connect_to
from ..channels import Services
from ..context import Outbox, bind_maintenance, bind_services
from ..hooks import TaskHook, TaskHooks
from ..maintenance import Maintenance
from ..registry import Registry, default_registry
from ..settings import Settings
from ..status import StatusStore
from .acker import Acker
from .deadlines import Watchdog
from .handoff import Handoff
from .janitor import Janitor
from .leases import Leases, RunningStatus
from .promoter import Promoter
from .reader import Reader, Slots
from .recoverer import Recoverer
from .retrying import until_done
from .runner import Runner

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("streamworker.worker")


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        redis: aioredis.Redis | None = None,
        hooks: Sequence[TaskHook] = (),
        concurrency: int | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else default_registry
        self._owns_redis = redis is None
        self.redis = redis or connect_to(settings)
        self.keys = settings.keyspace()
        status = StatusStore(
            self.keys, settings.completed_ttl_seconds, enabled=settings.track_status
        )
        self.broker = Broker(
            self.redis,
            self.keys,
            settings.group,
            status=status,
            dead_letter_maxlen=settings.dead_letter_max_length,
        )
        self.concurrency = concurrency or settings.worker_count
        self.slots = Slots(self.concurrency)
        self.acker = Acker(self.broker, capacity=4 * self.concurrency + 64)
        self.watchdog = Watchdog()  # handler timeouts
        self.promoter = Promoter(self.broker, interval=settings.promote_interval_seconds)
        self.hooks = TaskHooks(hooks)
        # One reader for every stream on a single node; on a cluster one per partition, since
        # a read (one script, one blocking XREADGROUP) can only cover one hash slot there.
        read_groups: list[list[int] | None] = [None]
        if self.keys.cluster:
            index = {f.stream: i for i, f in enumerate(self.broker.families)}
            read_groups = [
                [index[f.stream] for f in self.keys.partition_families(p)]
                for p in range(self.keys.partitions)
            ]
        # The start gate (cancel check and ``running``) only on a cluster: on a single Redis a
        # cancel deletes the unread entry itself, and ``running`` is written by the acker.
        gate = settings.track_status and self.keys.cluster
        self.readers = [
            Reader(
                self.broker,
                settings.consumer,
                self.slots,
                mode=settings.priority_mode,
                weights=settings.priority_weights,
                block_ms=settings.read_block_ms,
                check_cancelled=gate,
                hooks=self.hooks,
                families=group,
                acker=None if self.keys.cluster else self.acker,
            )
            for group in read_groups
        ]
        self.acker.reads_settle = not self.keys.cluster
        self.reader = self.readers[0]
        self.recoverer = Recoverer(
            self.broker,
            settings.consumer,
            self.slots,
            self.hooks,
            min_idle_seconds=settings.visibility_timeout_seconds,
            interval=settings.reclaim_interval_seconds,
            check_cancelled=gate,
        )
        self.leases = Leases(
            self.broker,
            settings.consumer,
            self.hooks,
            visibility_timeout=settings.visibility_timeout_seconds,
        )
        self.running_status = (
            RunningStatus(self.leases, self.acker)
            if settings.track_status and not self.keys.cluster
            else None
        )
        self.janitor = Janitor(
            self.broker, settings.consumer, self.hooks, idle_seconds=settings.consumer_idle_seconds
        )
        self.runner = Runner(
            self.broker,
            self.registry,
            settings,
            self.acker,
            self.hooks,
            Outbox(self.redis, self.keys.notification_outbox),
        )
        self.metrics = metrics  # served with the queue gauges on METRICS_PORT when set
        #: Channels and resources for handlers (``ctx.services``), built once per worker.
        self.services = Services(settings, self.redis, self.keys)
        self._stop = anyio.Event()
        self._starting: anyio.CancelScope | None = None  # made in run(): needs the event loop
        self.in_flight = 0
        self.completed_runs = 0

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask for a graceful stop (what SIGTERM does); also ends a start still waiting for
        Redis."""
        self._stop.set()
        if self._starting is not None:
            self._starting.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        metrics_server = None
        if self.settings.metrics_port is not None:
            from ..observability.http import MetricsServer

            # Bound first: a port in use stops the start with a clear error, nothing leaks.
            metrics_server = await MetricsServer(self, self.metrics).bind()
        self._starting = anyio.CancelScope()
        if self._stop.is_set():
            self._starting.cancel()
        with self._starting:
            await until_done(self._prepare, what="start", max_delay=2.0)
        if self._stop.is_set():  # stopped while waiting for Redis: nothing was started
            if metrics_server is not None:
                await metrics_server.aclose()
            if self._owns_redis:
                await self.redis.aclose()
            return
        # The runner tasks started below inherit this binding (ctx.maintenance).
        bind_maintenance(Maintenance(self.redis, self.keys, self.settings.completed_ttl_seconds))
        bind_services(self.services)
        handoff = Handoff()
        async with anyio.create_task_group() as services:
            await services.start(self.acker.run)
            await services.start(self.watchdog.run)
            await services.start(self.promoter.run)
            await services.start(self.leases.run)
            if self.running_status is not None:
                await services.start(self.running_status.run)
            await services.start(self.janitor.run)
            if metrics_server is not None:
                await services.start(metrics_server.run)
            async with anyio.create_task_group() as runners:
                for _ in range(self.concurrency):
                    runners.start_soon(self._run_tasks, handoff)
                reading = anyio.CancelScope()
                runners.start_soon(self._read, handoff, reading)
                log.info(
                    "worker_started",
                    extra={
                        "consumer": self.settings.consumer,
                        "group": self.settings.group,
                        "concurrency": self.concurrency,
                        "task_types": len(self.registry),
                    },
                )
                task_status.started()
                await self._stop.wait()
                log.info("worker_stopping", extra={"in_flight": self.in_flight})
                reading.cancel()  # phase 1: no new work; the closed hand-off ends idle runners
                # phase 2: in-flight handlers get the grace period, then are cancelled (their
                # entries stay pending and are picked up again)
                runners.cancel_scope.deadline = (
                    anyio.current_time() + self.settings.shutdown_grace_seconds
                )
            self.acker.close()
            with anyio.move_on_after(10):
                await self.acker.finished.wait()
            services.cancel_scope.cancel()
        await self.services.aclose()
        if self._owns_redis:
            await self.redis.aclose()
        log.info("worker_stopped", extra={"consumer": self.settings.consumer})

    async def _prepare(self) -> None:
        await self.broker.load_scripts()
        await self.broker.ensure_groups()

    async def _read(self, handoff: Handoff, scope: anyio.CancelScope) -> None:
        # The reader (new and own pending entries) and the recoverer (other consumers' stale
        # entries) feed the same runners; cancelling ``scope`` stops both. Closing every
        # feed at the end (closing twice is harmless) is what ends the idle runners.
        feeds = [handoff.feed() for _ in range(len(self.readers) + 1)]
        try:
            with scope:
                async with anyio.create_task_group() as feeders:
                    feeders.start_soon(self.recoverer.run, feeds[0])
                    for reader, feed in zip(self.readers, feeds[1:], strict=True):
                        feeders.start_soon(reader.run, feed)
        finally:
            for feed in feeds:
                feed.close()

    async def _run_tasks(self, handoff: Handoff) -> None:
        lane = self.watchdog.lane()
        # Bound once per runner: everything below runs once a task.
        take, take_nowait = handoff.take, handoff.take_nowait
        run, give = self.runner.run, self.slots.give
        running, monotonic = self.leases.running, time.monotonic
        try:
            while True:
                # One cancel scope for many tasks; the watchdog cancels it when a handler runs
                # past its timeout, and then the lane goes on in a fresh one (deadlines.py).
                with lane.renew():
                    while not lane.expired:
                        delivery = take_nowait()  # under load, without a coroutine
                        if delivery is None:
                            try:
                                delivery = await take()
                            except anyio.EndOfStream:
                                return
                        running[delivery] = monotonic()  # its lease is renewed while it runs
                        self.in_flight += 1
                        try:
                            await run(delivery, lane)
                        except Exception:
                            # A bug or an unexpected Redis reply: the entry stays pending and
                            # will be reclaimed; the worker itself keeps going.
                            log.exception(
                                "runner_error", extra={"entry_id": delivery.entry_id.decode()}
                            )
                        finally:
                            running.pop(delivery, None)
                            self.in_flight -= 1
                            self.completed_runs += 1
                            give()
        finally:
            self.watchdog.drop(lane)
