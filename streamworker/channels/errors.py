"""How a delivery channel says that it failed."""

from __future__ import annotations

from ..errors import RetryableError

__all__ = ["ChannelUnavailable", "NotConfigured"]


class ChannelUnavailable(RetryableError):
    """The service could not be reached or failed on its side (connection refused, timeout,
    HTTP 5xx, SMTP 4xx): retried, and counted against the channel's circuit breaker."""


class NotConfigured(LookupError):
    """A channel's settings are missing (e.g. SMTP_HOST for email)."""
