"""Text messages through an HTTP SMS gateway (``SMS_GATEWAY_URL``, ``SMS_API_KEY``).

The request is ``POST SMS_GATEWAY_URL`` with ``Authorization: Bearer <key>``, an
``Idempotency-Key`` header and the JSON body ``{"to", "message", "reference"}``.
"""

from __future__ import annotations

import httpx
import msgspec

from ..settings import Settings
from . import http
from .errors import NotConfigured

__all__ = ["SmsGateway"]


class _SmsRequest(msgspec.Struct, frozen=True, kw_only=True):
    to: str
    message: str
    reference: str


_encode = msgspec.json.Encoder().encode


class SmsGateway:
    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        if not settings.sms_gateway_url:
            raise NotConfigured("SMS is not configured (set SMS_GATEWAY_URL)")
        self._url = settings.sms_gateway_url
        self._key = settings.sms_api_key
        self._client = client

    async def send(self, *, to: str, message: str, reference: str) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": reference}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        body = _encode(_SmsRequest(to=to, message=message, reference=reference))
        await http.post(
            self._client, self._url, service="SMS gateway", content=body, headers=headers
        )
