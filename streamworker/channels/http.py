"""Shared HTTP handling of the HTTP channels: one outcome per response class.

2xx: sent. 408 and 5xx, timeouts and connection errors: :class:`ChannelUnavailable` (retry,
counted by the breaker). 429: :class:`~streamworker.Retry` after its ``Retry-After`` (seconds
or an HTTP date). 3xx: permanent (redirects are not followed: a redirect could lead a webhook
past the SSRF guard). Other 4xx: :class:`~streamworker.PermanentError`. Messages name the
service and the status, never the URL's path, query or body.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

import httpx

from ..errors import PermanentError, Retry
from .errors import ChannelUnavailable

__all__ = ["parse_retry_after", "post"]

#: A Retry-After further away than this is capped (the task will simply try again then).
MAX_RETRY_AFTER_SECONDS = 3600.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    service: str,
    content: bytes,
    headers: Mapping[str, str],
) -> httpx.Response:
    try:
        response = await client.post(url, content=content, headers=dict(headers))
    except httpx.TimeoutException:
        raise ChannelUnavailable(f"{service} timed out") from None
    except httpx.TransportError as exc:
        raise ChannelUnavailable(f"{service} unreachable ({type(exc).__name__})") from None
    check_response(response, service)
    return response


async def get(client: httpx.AsyncClient, url: str, *, service: str) -> httpx.Response:
    try:
        response = await client.get(url)
    except httpx.TimeoutException:
        raise ChannelUnavailable(f"{service} timed out") from None
    except httpx.TransportError as exc:
        raise ChannelUnavailable(f"{service} unreachable ({type(exc).__name__})") from None
    check_response(response, service)
    return response


def check_response(response: httpx.Response, service: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429:
        after = parse_retry_after(response.headers.get("retry-after"))
        if after is not None:
            raise Retry(after=after, reason=f"{service} answered 429 (Retry-After {after:g}s)")
        raise ChannelUnavailable(f"{service} answered 429")
    if status == 408 or status >= 500:
        raise ChannelUnavailable(f"{service} answered HTTP {status}")
    if 300 <= status < 400:
        raise PermanentError(f"{service} answered a redirect (HTTP {status}), not followed")
    raise PermanentError(f"{service} refused the request (HTTP {status})")
