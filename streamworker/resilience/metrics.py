"""Prometheus metrics of the delivery channels. Labels are channel names and outcomes only
(a handful of values): never task ids, hosts or recipients."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BREAKER_STATE = Gauge(
    "circuit_breaker_state",
    "Circuit breaker state as last seen by this process (0 closed, 1 half-open, 2 open)",
    ["channel"],
)
BREAKER_TRANSITIONS = Counter(
    "circuit_breaker_transitions_total",
    "Circuit breaker state changes made by this process",
    ["channel", "to_state"],
)
DEFERRED = Counter(
    "channel_deferrals_total",
    "Sends postponed without using a retry (breaker open or rate limit reached)",
    ["channel", "reason"],
)
DELIVERIES = Counter(
    "notification_deliveries_total",
    "Sends through a delivery channel by outcome (sent, duplicate_skipped, failed)",
    ["channel", "outcome"],
)
SKIPPED = Counter(
    "notifications_skipped_total",
    "Notification tasks completed without sending because NOTIFICATION_ENABLED=false",
    ["task_type"],
)

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
