"""Where a notification goes: the recipient's channels and contact details.

Resolved in this order: what the payload names (``channels``, ``email``, ``phone``); the User
Service (``GET {USER_SERVICE_URL}/api/v1/users/{ref}/contact-preferences`` answering
``{"channels": [...], "email": ..., "phone": ...}``) when configured; else e-mail to
``<ref>@RECIPIENT_EMAIL_DOMAIN`` when that is set (a relay that maps pseudonymous addresses;
dev mode uses it), else push through the Notification Service, which resolves references
itself, else the notification outbox stream (``notification_outbox``: references only) for a
delivery process outside this service.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec

from ..errors import PermanentError
from ..settings import Settings
from . import http

__all__ = ["ContactPreferences", "Directory"]

CHANNELS = ("email", "sms", "push")


class ContactPreferences(msgspec.Struct, frozen=True, kw_only=True):
    channels: tuple[str, ...] = ()
    email: str | None = None
    phone: str | None = None


_decode_preferences = msgspec.json.Decoder(ContactPreferences)


class Directory:
    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._url = settings.user_service_url
        self._domain = settings.recipient_email_domain
        self._push = settings.notification_service_url is not None
        self._client = client

    async def resolve(
        self,
        ref: str,
        *,
        channels: tuple[str, ...] = (),
        email: str | None = None,
        phone: str | None = None,
    ) -> ContactPreferences:
        if channels and (email or phone or "push" in channels or self._url is None):
            return ContactPreferences(
                channels=channels, email=email or self._fallback_email(ref), phone=phone
            )
        if self._url is not None:
            found = await self._lookup(ref)
            return ContactPreferences(
                channels=channels or found.channels,
                email=email or found.email,
                phone=phone or found.phone,
            )
        if email or phone:
            picked = tuple(c for c, v in (("email", email), ("sms", phone)) if v)
            return ContactPreferences(channels=picked, email=email, phone=phone)
        fallback = self._fallback_email(ref)
        if fallback:
            return ContactPreferences(channels=("email",), email=fallback)
        if self._push:
            return ContactPreferences(channels=("push",))
        # Nothing configured to reach people directly: leave the notice, by reference, in the
        # notification outbox stream for a delivery process outside this service.
        return ContactPreferences(channels=("outbox",))

    def _fallback_email(self, ref: str) -> str | None:
        return f"{ref}@{self._domain}" if self._domain else None

    async def _lookup(self, ref: str) -> ContactPreferences:
        assert self._url is not None
        url = f"{self._url}/api/v1/users/{quote(ref, safe='')}/contact-preferences"
        response = await http.get(self._client, url, service="User Service")
        try:
            return _decode_preferences.decode(response.content)
        except msgspec.DecodeError:
            raise PermanentError("User Service answered an unreadable preference record") from None
