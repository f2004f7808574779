"""Scheduler metrics (Prometheus default registry). Schedule names are a handful of
configured names, so they are fine as label values."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["FIRES", "LAST_FIRE", "LEADER", "LEADER_CHANGES", "MISFIRES_SKIPPED"]

FIRES = Counter(
    "scheduler_fires_total",
    "Occurrences of a schedule published (by this process; each occurrence once overall).",
    ["schedule"],
)
MISFIRES_SKIPPED = Counter(
    "scheduler_misfires_skipped_total",
    "Occurrences missed while no scheduler ran and dropped by the schedule's misfire policy.",
    ["schedule"],
)
LEADER_CHANGES = Counter(
    "scheduler_leader_changes_total",
    "Times this process became the scheduler leader (a new lease term).",
)
LEADER = Gauge("scheduler_leader", "1 while this process holds the scheduler lease.")
LAST_FIRE = Gauge(
    "scheduler_last_fire_timestamp_seconds",
    "Time (epoch s) of the last occurrence this process published, per schedule.",
    ["schedule"],
)
