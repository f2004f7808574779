"""Client of the platform's Notification Service (``NOTIFICATION_SERVICE_URL``,
``NOTIFICATION_API_KEY``): push and in-app delivery by recipient reference — the service
looks the device up itself, so no contact detail passes through this one.

``POST {url}/api/v1/notifications`` with ``Authorization: Bearer <key>``, an
``Idempotency-Key`` and ``{"recipient_ref", "kind", "title", "body", "reference"}``.
"""

from __future__ import annotations

import httpx
import msgspec

from ..settings import Settings
from . import http
from .errors import NotConfigured

__all__ = ["NotificationServiceClient"]


class _NotificationRequest(msgspec.Struct, frozen=True, kw_only=True):
    recipient_ref: str
    kind: str
    title: str
    body: str
    reference: str


_encode = msgspec.json.Encoder().encode


class NotificationServiceClient:
    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        if not settings.notification_service_url:
            raise NotConfigured("push is not configured (set NOTIFICATION_SERVICE_URL)")
        self._url = f"{settings.notification_service_url}/api/v1/notifications"
        self._key = settings.notification_api_key
        self._client = client

    async def send(
        self, *, recipient_ref: str, kind: str, title: str, body: str, reference: str
    ) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": reference}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = _NotificationRequest(
            recipient_ref=recipient_ref, kind=kind, title=title, body=body, reference=reference
        )
        await http.post(
            self._client,
            self._url,
            service="Notification Service",
            content=_encode(request),
            headers=headers,
        )
