"""Prometheus metrics (CONTRACT.md §9): a life-cycle hook for what this process did, and a
collector that reads the queues from Redis at scrape time.

The hook counts runs, failures, retries, dead letters and waits as they happen. The queue
gauges (``task_queue_size`` and friends) are not counters of this process: every scrape reads
them from Redis through :func:`streamworker.stats.collect_stats` (cached for a moment, so a
burst of scrapes costs one pipeline), so every replica reports the same truth.

Labels are low-cardinality on purpose: task type (only registered types; anything else is
``unknown``), priority, outcome, reason, event. Never a task id, a user id or error text.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Container, Iterable, Sequence
from itertools import accumulate
from typing import Any, Protocol

import anyio
import prometheus_client.metrics
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from ..errors import Retry
from ..hooks import Outcome, TaskEnd, WorkerEvent
from ..keyspace import Keyspace
from ..stats import QueueStats, collect_stats
from ..wire import Rejected, Task
from ..worker.runner import TaskTimeout

__all__ = ["MetricsHook", "QueueCollector", "WorkerStateCollector", "failure_reason"]

log = logging.getLogger("streamworker.metrics")
# Module globals: an enum member read off its class costs ~1,000 instructions on Python 3.11,
# and after() compares every task's outcome with two of them.
_RETRYING = Outcome.RETRYING
_DEAD_LETTERED = Outcome.DEAD_LETTERED

# Handler run time: the seed's SLO is p95 < 5 s, so the buckets are dense around it.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Time an entry waited in its stream before a handler started (includes backlog).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

UNKNOWN = "unknown"


def failure_reason(end: TaskEnd) -> str:
    """The ``reason`` label of a failed run: the dead-letter reason when it ended there,
    else why the attempt failed (``timeout``, ``retry_requested`` or ``error``)."""
    if end.dead_letter_reason:
        return end.dead_letter_reason
    if isinstance(end.error, TaskTimeout):
        return "timeout"
    if isinstance(end.error, Retry):
        return "retry_requested"
    return "error"


class _TaskSeries(Collector):
    """A metric for the per-task path, kept as plain numbers and turned into the samples
    prometheus_client's own class of that kind exposes at scrape time (``_created``
    included). The worker's event loop is the only writer, and the scrape runs on that loop
    too; a scrape from another thread copies the numbers first."""

    kind = ""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._created: dict[Any, float] = {}  # per label value(s): when first seen
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [Metric(self._name, self._documentation, self.kind)]

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self._name, self._documentation, self.kind)
        created = _created_series()
        for key, labels in self._samples(metric):
            if created:
                metric.add_sample(self._name + "_created", labels, self._created[key])
        return [metric]

    def _samples(self, metric: Metric) -> Iterable[tuple[Any, dict[str, str]]]:
        """Add each series' samples to ``metric``; yield its key and labels."""
        raise NotImplementedError


class _TaskCounter(_TaskSeries):
    """prometheus_client's ``Counter`` takes a lock and a label lookup per add; this is one
    dict add."""

    kind = "counter"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._labelnames = tuple(labelnames)
        self._counts: dict[tuple[str, ...], float] = {}
        super().__init__(name, documentation, registry)

    def add(self, labels: tuple[str, ...], amount: float = 1) -> None:
        counts = self._counts
        if labels in counts:
            counts[labels] += amount
        else:
            self._created[labels] = time.time()
            counts[labels] = amount

    def _samples(self, metric: Metric) -> Iterable[tuple[Any, dict[str, str]]]:
        for key, count in list(self._counts.items()):
            labels = dict(zip(self._labelnames, map(str, key), strict=True))
            metric.add_sample(self._name + "_total", labels, count)
            yield key, labels


class _TaskHistogram(_TaskSeries):
    """A histogram with one label. Per label value it keeps the count in each bucket (not
    yet cumulative) and the sum. prometheus_client's ``Histogram`` takes two locks and walks
    its buckets for each observation (about 1.2 us here); this is a ``bisect`` and two list
    adds."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelname: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._labelname = labelname
        self._bounds = tuple(float(b) for b in buckets)
        to_go: Any = floatToGoString  # the bucket labels exactly as prometheus_client writes them
        self._les = [to_go(b) for b in (*self._bounds, float("inf"))]
        # per label value: [count in bucket 0, ..., count above the last bound, sum]
        self._series: dict[str, list[float]] = {}
        super().__init__(name, documentation, registry)

    def observe(self, label: str, value: float) -> None:
        series = self._series.get(label)
        if series is None:
            self._created[label] = time.time()
            series = self._series[label] = [0] * (len(self._bounds) + 1) + [0.0]
        series[bisect_left(self._bounds, value)] += 1  # bucket le=b holds values <= b
        series[-1] += value

    def _samples(self, metric: Metric) -> Iterable[tuple[Any, dict[str, str]]]:
        for key, series in list(self._series.items()):
            series = list(series)
            labels = {self._labelname: key}
            cumulative = list(accumulate(series[:-1]))
            for le, count in zip(self._les, cumulative, strict=True):
                metric.add_sample(self._name + "_bucket", {**labels, "le": le}, count)
            metric.add_sample(self._name + "_count", labels, cumulative[-1])
            metric.add_sample(self._name + "_sum", labels, series[-1])
            yield key, labels


def _created_series() -> bool:
    """Whether ``_created`` samples are exposed (prometheus_client's switch, which
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` turns off), so these series match the others."""
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class MetricsHook:
    """Counts the task life cycle into ``registry``. The three series every task touches
    (runs, run time, wait) are :class:`_TaskCounter` and :class:`_TaskHistogram`: a dict
    lookup and an add each. For the others, label children are cached, so each is a dict
    lookup and a locked add."""

    def __init__(
        self, registry: CollectorRegistry, known_task_types: Container[str] | None = None
    ) -> None:
        self._known = known_task_types
        self.processed = _TaskCounter(
            "tasks_processed",
            "Task runs finished, by outcome (completed, retrying, dead_lettered, deferred, "
            "cancelled); entries dead-lettered without a run count as dead_lettered.",
            ["task_type", "priority", "outcome"],
            registry=registry,
        )
        self.duration = _TaskHistogram(
            "task_processing_duration_seconds",
            "Handler run time, whatever the outcome.",
            "task_type",
            DURATION_BUCKETS,
            registry,
        )
        self.failures = Counter(
            "task_failures",
            "Failed runs and rejected entries, by reason (a dead-letter reason, or timeout / "
            "retry_requested / error for an attempt that will be retried).",
            ["task_type", "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "task_retries",
            "Failed attempts scheduled for another try.",
            ["task_type", "priority"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "task_dead_lettered",
            "Entries moved to the dead-letter stream, by dlq_reason.",
            ["priority", "reason"],
            registry=registry,
        )
        self.reclaimed = Counter(
            "task_reclaimed",
            "Entries taken over from a stale consumer (XAUTOCLAIM).",
            ["priority"],
            registry=registry,
        )
        self.wait = _TaskHistogram(
            "task_enqueue_to_start_seconds",
            "Time from the entry's stream id (publish, retry or promotion) to the handler start.",
            "priority",
            WAIT_BUCKETS,
            registry,
        )
        self.redis_errors = Counter(
            "streamworker_redis_errors",
            "Redis calls that failed and were retried.",
            [],
            registry=registry,
        )
        self.redis_reconnects = Counter(
            "streamworker_redis_reconnects",
            "Times Redis answered again after errors.",
            [],
            registry=registry,
        )
        self.worker_events = Counter(
            "streamworker_worker_events",
            "Worker-level events (reclaimed, lease_renewed, reaped, deleted_pending, ...).",
            ["event"],
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _task_type(self, task_type: str | None) -> str:
        if not task_type or (self._known is not None and task_type not in self._known):
            return UNKNOWN  # an unregistered type name comes from outside: unbounded
        return task_type

    # -- TaskHook -------------------------------------------------------------------------

    def before(self, task: Task, started_at: float, enqueued_at: float) -> None:
        wait = started_at - enqueued_at
        self.wait.observe(task.priority, wait if wait > 0.0 else 0.0)

    def after(self, task: Task, token: Any, end: TaskEnd) -> None:
        outcome = end.outcome
        self.processed.add((task.task_type, task.priority, outcome))
        self.duration.observe(task.task_type, end.duration)
        if outcome is _RETRYING:
            self._child(self.retries, task.task_type, task.priority).inc()
            self._child(self.failures, task.task_type, failure_reason(end)).inc()
        elif outcome is _DEAD_LETTERED:
            reason = failure_reason(end)
            self._child(self.failures, task.task_type, reason).inc()
            self._child(self.dead_lettered, task.priority, reason).inc()

    def rejected(self, rejected: Rejected, priority: str) -> None:
        task_type = self._task_type(rejected.task_type)
        self.processed.add((task_type, priority, Outcome.DEAD_LETTERED.value))
        self._child(self.failures, task_type, rejected.reason).inc()
        self._child(self.dead_lettered, priority, rejected.reason).inc()

    def event(self, event: WorkerEvent, priority: str | None, count: int) -> None:
        self._child(self.worker_events, str(event)).inc(count)
        if event is WorkerEvent.RECLAIMED:
            self._child(self.reclaimed, priority or UNKNOWN).inc(count)
        elif event is WorkerEvent.REAPED:
            # The poison entries never finished a run: they count as failed, dead-lettered
            # processing so that the failure ratio sees them.
            reason = "max_deliveries_exceeded"
            self.processed.add((UNKNOWN, priority or UNKNOWN, "dead_lettered"), count)
            self._child(self.failures, UNKNOWN, reason).inc(count)
            self._child(self.dead_lettered, priority or UNKNOWN, reason).inc(count)
        elif event is WorkerEvent.REDIS_ERROR:
            self.redis_errors.inc(count)
        elif event is WorkerEvent.REDIS_RECONNECTED:
            self.redis_reconnects.inc(count)


class QueueCollector(Collector):
    """Queue gauges read from Redis. ``refresh()`` (async, called by the scrape handler)
    updates a cache that ``collect()`` (sync, called by the exposition) reads."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        group: str,
        *,
        max_age: float = 2.0,
        timeout: float = 3.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._group = group
        self._max_age = max_age
        self._timeout = timeout
        self._stats: QueueStats | None = None
        self._fetched_at = 0.0
        self._up = False
        self._lock = anyio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._max_age:
                return
            try:
                with anyio.fail_after(self._timeout):
                    self._stats = await collect_stats(self._redis, self._keys, self._group)
                self._up = True
            except (RedisError, OSError, TimeoutError) as exc:
                # Stale numbers would look like the truth: report the queues as unknown.
                self._stats = None
                self._up = False
                log.warning("queue_stats_failed", extra={"error_type": type(exc).__name__})
            self._fetched_at = time.monotonic()

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._stats)

    def _families(self, stats: QueueStats | None) -> list[Metric]:
        def per_priority(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["priority"])

        size = per_priority(
            "task_queue_size",
            "Backlog per priority: consumer-group lag + pending (not XLEN). When Redis reports "
            "lag as null (entries were deleted), lag = XLEN - pending.",
        )
        pending = per_priority("task_queue_pending", "Entries delivered and not yet acknowledged.")
        lag = per_priority("task_queue_lag", "Entries not yet delivered to the consumer group.")
        length = per_priority("task_queue_length", "XLEN of the priority stream.")
        oldest = per_priority(
            "task_queue_oldest_pending_age_seconds",
            "Age of the oldest pending entry (0 when nothing is pending).",
        )
        consumers = per_priority("task_queue_consumers", "Consumers in the group.")
        delayed = per_priority("task_delayed_size", "Entries parked until due (delay, retries).")
        dead = GaugeMetricFamily("task_dead_letter_size", "Entries in the dead-letter stream.")
        up = GaugeMetricFamily(
            "task_queue_stats_up", "1 when the last read of the queue gauges from Redis worked."
        )
        up.add_metric([], 1.0 if stats is not None and self._up else 0.0)
        families: list[Metric] = [up]
        if stats is None:
            return families
        for p in stats.priorities:
            labels = [p.priority]
            size.add_metric(labels, p.backlog)
            pending.add_metric(labels, p.pending)
            lag.add_metric(labels, p.lag)
            length.add_metric(labels, p.length)
            oldest.add_metric(labels, p.oldest_pending_age_seconds or 0.0)
            consumers.add_metric(labels, p.consumers)
            delayed.add_metric(labels, p.delayed)
        dead.add_metric([], stats.dead_letters)
        families += [size, pending, lag, length, oldest, consumers, delayed, dead]
        if stats.partitions:  # STREAM_PARTITIONS > 1: the backlog of each partition too
            per_partition = GaugeMetricFamily(
                "task_queue_partition_size",
                "Backlog (lag + pending) of one partition of a priority.",
                labels=["priority", "partition"],
            )
            for p in stats.partitions:
                per_partition.add_metric([p.priority, str(p.partition)], p.backlog)
            families.append(per_partition)
        return families


class WorkerState(Protocol):
    @property
    def in_flight(self) -> int: ...

    @property
    def concurrency(self) -> int: ...


class WorkerStateCollector(Collector):
    """Handler slots in use and available, read from the worker itself (no hot-path cost)."""

    def __init__(self, worker: WorkerState, visibility_timeout: float | None = None) -> None:
        self._worker = worker
        self._visibility_timeout = visibility_timeout

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "streamworker_handlers_in_flight", "Handlers running now in this process."
        )
        in_flight.add_metric([], self._worker.in_flight)
        slots = GaugeMetricFamily(
            "streamworker_handler_slots", "Handlers this process may run at once (WORKER_COUNT)."
        )
        slots.add_metric([], self._worker.concurrency)
        families: list[Metric] = [in_flight, slots]
        if self._visibility_timeout is not None:
            # For the alert "oldest pending older than the visibility timeout", whatever it is.
            visibility = GaugeMetricFamily(
                "streamworker_visibility_timeout_seconds",
                "VISIBILITY_TIMEOUT_SECONDS of this worker.",
            )
            visibility.add_metric([], self._visibility_timeout)
            families.append(visibility)
        return families
