"""Signed webhook delivery.

Each request carries ``X-Streamworker-Timestamp`` (Unix seconds) and
``X-Streamworker-Signature: sha256=<hex>``, the HMAC-SHA256 with ``WEBHOOK_SECRET`` as the
key over ``<timestamp>.<raw body>``. A receiver recomputes it over the raw bytes it received,
compares in constant time, and rejects timestamps more than five minutes away from its clock
(replay protection). ``X-Streamworker-Delivery`` (task id) lets it drop duplicates.
:func:`verify_signature` is that recipe in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from ..errors import PermanentError
from . import http
from .errors import ChannelUnavailable
from .ssrf import check_target

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookSender", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Streamworker-Signature"
TIMESTAMP_HEADER = "X-Streamworker-Timestamp"
DELIVERY_HEADER = "X-Streamworker-Delivery"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_seconds: float = 300,
    now: float | None = None,
) -> bool:
    """The receiver's check: signature matches and the timestamp is recent."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    def __init__(self, client: httpx.AsyncClient, secret: str | None, allow_private: bool) -> None:
        self._client = client
        self._secret = secret
        self._allow_private = allow_private

    async def target(self, url: str) -> httpx.URL:
        """Check the URL (SSRF guard) before anything is sent."""
        return await check_target(url, allow_private=self._allow_private)

    async def deliver(self, url: httpx.URL, body: bytes, delivery_id: str, method: str) -> int:
        if not self._secret:
            raise PermanentError("webhooks are not configured (set WEBHOOK_SECRET)")
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            DELIVERY_HEADER: delivery_id,
            "User-Agent": "streamworker-webhook/1",
        }
        try:
            response = await self._client.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise ChannelUnavailable("webhook receiver timed out") from None
        except httpx.TransportError as exc:
            raise ChannelUnavailable(
                f"webhook receiver unreachable ({type(exc).__name__})"
            ) from None
        http.check_response(response, "webhook receiver")
        return response.status_code
