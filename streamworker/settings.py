"""Environment -> one frozen, validated Settings object (CONTRACT.md §8).

Configuration is read once, at the edge (the CLI), and passed down. Nothing else in the
package reads ``os.environ``.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .keyspace import MAX_PARTITIONS, PRIORITIES, Keyspace

__all__ = ["ConfigError", "Settings"]


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        super().__init__(f"configuration error: {variable} {problem}")


def _default_consumer() -> str:
    # Host name plus the pid: stable for the life of the process, distinct between the
    # processes of one host. In Kubernetes set STREAMWORKER_CONSUMER from the pod name.
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    redis_url: str | None = None
    # Scale-out (README "Scaling out"): the cluster client, and partitions per priority.
    redis_cluster: bool = False
    stream_partitions: int = 1
    port: int = 8086
    worker_count: int = 5
    max_retries: int = 3
    notification_enabled: bool = True
    notification_api_key: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    prefix: str = ""
    group: str = "streamworker"
    consumer: str = field(default_factory=_default_consumer)
    visibility_timeout_seconds: float = 60.0
    max_deliveries: int = 5
    task_timeout_seconds: float = 30.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    retry_jitter: Literal["full", "equal"] = "full"
    shutdown_grace_seconds: float = 25.0
    completed_ttl_seconds: int = 172800
    max_payload_bytes: int = 1048576
    metrics_port: int | None = None
    log_level: str = "info"
    # Beyond the contract's list: documented in the README.
    priority_mode: Literal["strict", "weighted"] = "strict"
    priority_weights: tuple[int, ...] = (8, 4, 2, 1)
    handler_modules: tuple[str, ...] = ("handlers",)
    promote_interval_seconds: float = 0.25
    read_block_ms: int = 1000
    idempotency_ttl_seconds: int = 86400
    track_status: bool = True
    dead_letter_max_length: int = 100000  # 0 = unbounded
    # Recurring tasks (streamworker.scheduler).
    schedules_file: str | None = None
    scheduler_lease_seconds: float = 5.0
    scheduler_misfire_grace_seconds: float = 60.0
    scheduler_tick_seconds: float = 1.0
    # Observability (README "Observability"). Tracing follows the standard OTEL_* variables.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = None
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    otel_service_name: str = "background-tasks"
    audit_enabled: bool = True
    audit_service_url: str | None = None
    audit_service_token: str | None = field(default=None, repr=False)
    audit_stream_maxlen: int = 100_000
    audit_buffer_size: int = 10_000
    reclaim_interval_seconds: float = 5.0
    consumer_idle_seconds: float = 3600.0
    # Delivery channels and handler resources (README "Handlers"); None = not configured.
    smtp_host: str | None = None
    smtp_port: int | None = None  # default 465 with SMTP_TLS, else 587 (25 without STARTTLS)
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "streamworker@localhost"
    smtp_starttls: bool | None = None  # None: use STARTTLS when the server offers it
    smtp_tls: bool = False
    sms_gateway_url: str | None = None
    sms_api_key: str | None = field(default=None, repr=False)
    notification_service_url: str | None = None
    user_service_url: str | None = None
    recipient_email_domain: str | None = None
    http_timeout_seconds: float = 10.0
    webhook_allow_private: bool = False
    export_dir: str | None = None
    cleanup_root: str | None = None
    rate_limits: tuple[tuple[str, float], ...] = ()
    breaker_failure_threshold: int = 5
    breaker_failure_ratio: float = 0.5
    breaker_min_calls: int = 20
    breaker_window_seconds: float = 60.0
    breaker_cooldown_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in _VARIABLES:
            raw = env.get(var.name)
            if raw is None or (raw.strip() == "" and var.name != "STREAMWORKER_PREFIX"):
                continue
            try:
                values[var.field] = var.parse(
                    raw.strip() if var.name != "STREAMWORKER_PREFIX" else raw
                )
            except ValueError as exc:
                raise ConfigError(var.name, f"{exc} (got {raw!r})") from None
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ConfigError("RETRY_MAX_SECONDS", "must be at least RETRY_BASE_SECONDS")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(
                "REDIS_URL", "must start with redis://, rediss:// or unix:// (got a bare address)"
            )
        if self.redis_cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ConfigError(
                "STREAMWORKER_PREFIX", "must not contain { or } with REDIS_CLUSTER=true"
            )
        if not 1 <= self.stream_partitions <= MAX_PARTITIONS:
            raise ConfigError(
                "STREAM_PARTITIONS", f"must be an integer between 1 and {MAX_PARTITIONS}"
            )
        if any(c.isspace() for c in self.consumer) or not self.consumer:
            raise ConfigError("STREAMWORKER_CONSUMER", "must be a non-empty name without spaces")
        if self.smtp_tls and self.smtp_starttls:
            raise ConfigError("SMTP_STARTTLS", "cannot be combined with SMTP_TLS=true (pick one)")

    @property
    def otel_enabled(self) -> bool:
        """Tracing is on when an exporter is chosen or an OTLP endpoint is given, and the SDK
        is not disabled; with nothing set it is off and no tracing hook is installed."""
        if self.otel_sdk_disabled or self.otel_traces_exporter == "none":
            return False
        return self.otel_traces_exporter is not None or bool(
            self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint
        )

    def with_overrides(self, **changes: Any) -> Settings:
        new = replace(self, **changes)
        new.check()
        return new

    def keyspace(self) -> Keyspace:
        """The key names of this deployment (prefix, partitions, cluster layout)."""
        return Keyspace(self.prefix, partitions=self.stream_partitions, cluster=self.redis_cluster)

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL", "is required (e.g. redis://localhost:6379/0)")
        return self.redis_url


# -- parsers ------------------------------------------------------------------------------


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be an integer {bound}")
        return value

    return parse


def _number(*, positive: bool = True, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise ValueError("must be a number > 0" if not allow_zero else "must be a number >= 0")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw.lower()

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _name(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise ValueError("must be a non-empty name without spaces")
    return raw


def _prefix(raw: str) -> str:
    if any(c.isspace() for c in raw):
        raise ValueError("must not contain spaces")
    return raw


def _weights(raw: str) -> tuple[int, ...]:
    """``critical=8,high=4,normal=2,low=1`` (every priority, each weight >= 1)."""
    given: dict[str, int] = {}
    for part in _csv(raw):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in PRIORITIES:
            raise ValueError("must look like critical=8,high=4,normal=2,low=1")
        try:
            weight = int(value)
        except ValueError:
            raise ValueError("weights must be integers >= 1") from None
        if weight < 1:
            raise ValueError("weights must be integers >= 1")
        given[name.strip()] = weight
    if set(given) != set(PRIORITIES):
        raise ValueError("must give a weight for each of " + ", ".join(PRIORITIES))
    return tuple(given[p] for p in PRIORITIES)


def _port(raw: str) -> int:
    return _int(1, 65535)(raw)


def _url(raw: str) -> str:
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://"):
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def _ratio(raw: str) -> float:
    value = _number()(raw)
    if value > 1:
        raise ValueError("must be a number > 0 and <= 1")
    return value


def _rate_limits(raw: str) -> tuple[tuple[str, float], ...]:
    """``sms=10,email=50``: per channel, the most sends per second across all replicas."""
    limits: dict[str, float] = {}
    for part in _csv(raw):
        name, sep, value = part.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not sep or not name.strip() or not math.isfinite(rate) or rate <= 0:
            raise ValueError("must look like sms=10,email=50 (sends per second, > 0)")
        limits[name.strip()] = rate
    return tuple(sorted(limits.items()))


@dataclass(frozen=True, slots=True)
class _Var:
    name: str
    field: str
    parse: Callable[[str], Any]


_VARIABLES: tuple[_Var, ...] = (
    _Var("REDIS_URL", "redis_url", _url),
    _Var("REDIS_CLUSTER", "redis_cluster", _bool),
    _Var("STREAM_PARTITIONS", "stream_partitions", _int(1, MAX_PARTITIONS)),
    _Var("PORT", "port", _port),
    _Var("WORKER_COUNT", "worker_count", _int(1, 10000)),
    _Var("MAX_RETRIES", "max_retries", _int(0, 1000)),
    _Var("NOTIFICATION_ENABLED", "notification_enabled", _bool),
    _Var("NOTIFICATION_API_KEY", "notification_api_key", str),
    _Var("WEBHOOK_SECRET", "webhook_secret", str),
    _Var("API_TOKENS", "api_tokens", _csv),
    _Var("STREAMWORKER_PREFIX", "prefix", _prefix),
    _Var("STREAMWORKER_GROUP", "group", _name),
    _Var("STREAMWORKER_CONSUMER", "consumer", _name),
    _Var("VISIBILITY_TIMEOUT_SECONDS", "visibility_timeout_seconds", _number()),
    _Var("MAX_DELIVERIES", "max_deliveries", _int(1)),
    _Var("TASK_TIMEOUT_SECONDS", "task_timeout_seconds", _number()),
    _Var("RETRY_BASE_SECONDS", "retry_base_seconds", _number()),
    _Var("RETRY_MAX_SECONDS", "retry_max_seconds", _number()),
    _Var("RETRY_JITTER", "retry_jitter", _choice("full", "equal")),
    _Var("SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds", _number(allow_zero=True)),
    _Var("COMPLETED_TTL_SECONDS", "completed_ttl_seconds", _int(1)),
    _Var("MAX_PAYLOAD_BYTES", "max_payload_bytes", _int(1)),
    _Var("METRICS_PORT", "metrics_port", _port),
    _Var("LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error", "critical")),
    _Var("PRIORITY_MODE", "priority_mode", _choice("strict", "weighted")),
    _Var("PRIORITY_WEIGHTS", "priority_weights", _weights),
    _Var("STREAMWORKER_HANDLERS", "handler_modules", _csv),
    _Var("PROMOTE_INTERVAL_SECONDS", "promote_interval_seconds", _number()),
    _Var("READ_BLOCK_MS", "read_block_ms", _int(1, 60000)),
    _Var("IDEMPOTENCY_TTL_SECONDS", "idempotency_ttl_seconds", _int(1)),
    _Var("TRACK_STATUS", "track_status", _bool),
    _Var("DEAD_LETTER_MAX_LENGTH", "dead_letter_max_length", _int(0)),
    _Var("SCHEDULES_FILE", "schedules_file", str),
    _Var("SCHEDULER_LEASE_SECONDS", "scheduler_lease_seconds", _number()),
    _Var("SCHEDULER_MISFIRE_GRACE_SECONDS", "scheduler_misfire_grace_seconds", _number()),
    _Var("SCHEDULER_TICK_SECONDS", "scheduler_tick_seconds", _number()),
    _Var("OTEL_SDK_DISABLED", "otel_sdk_disabled", _bool),
    _Var("OTEL_TRACES_EXPORTER", "otel_traces_exporter", _choice("otlp", "console", "none")),
    _Var("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint", _http_url),
    _Var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel_exporter_otlp_traces_endpoint", _http_url),
    _Var(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "otel_exporter_otlp_protocol",
        _choice("http/protobuf", "grpc"),
    ),
    _Var("OTEL_SERVICE_NAME", "otel_service_name", _name),
    _Var("AUDIT_ENABLED", "audit_enabled", _bool),
    _Var("AUDIT_SERVICE_URL", "audit_service_url", _http_url),
    _Var("AUDIT_SERVICE_TOKEN", "audit_service_token", str),
    _Var("AUDIT_STREAM_MAXLEN", "audit_stream_maxlen", _int(100)),
    _Var("AUDIT_BUFFER_SIZE", "audit_buffer_size", _int(100, 10_000_000)),
    _Var("RECLAIM_INTERVAL_SECONDS", "reclaim_interval_seconds", _number()),
    _Var("CONSUMER_IDLE_SECONDS", "consumer_idle_seconds", _number()),
    _Var("SMTP_HOST", "smtp_host", _name),
    _Var("SMTP_PORT", "smtp_port", _port),
    _Var("SMTP_USERNAME", "smtp_username", str),
    _Var("SMTP_PASSWORD", "smtp_password", str),
    _Var("SMTP_FROM", "smtp_from", _name),
    _Var("SMTP_STARTTLS", "smtp_starttls", _bool),
    _Var("SMTP_TLS", "smtp_tls", _bool),
    _Var("SMS_GATEWAY_URL", "sms_gateway_url", _http_url),
    _Var("SMS_API_KEY", "sms_api_key", str),
    _Var("NOTIFICATION_SERVICE_URL", "notification_service_url", _http_url),
    _Var("USER_SERVICE_URL", "user_service_url", _http_url),
    _Var("RECIPIENT_EMAIL_DOMAIN", "recipient_email_domain", _name),
    _Var("HTTP_TIMEOUT_SECONDS", "http_timeout_seconds", _number()),
    _Var("WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", _bool),
    _Var("EXPORT_DIR", "export_dir", str),
    _Var("CLEANUP_ROOT", "cleanup_root", str),
    _Var("RATE_LIMITS", "rate_limits", _rate_limits),
    _Var("BREAKER_FAILURE_THRESHOLD", "breaker_failure_threshold", _int(1, 10000)),
    _Var("BREAKER_FAILURE_RATIO", "breaker_failure_ratio", _ratio),
    _Var("BREAKER_MIN_CALLS", "breaker_min_calls", _int(1)),
    _Var("BREAKER_WINDOW_SECONDS", "breaker_window_seconds", _number()),
    _Var("BREAKER_COOLDOWN_SECONDS", "breaker_cooldown_seconds", _number()),
)
