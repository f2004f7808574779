"""Direct delivery task contracts: one e-mail, one text message, one webhook call."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Email = Annotated[
    str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")
]


class SendEmail(msgspec.Struct, frozen=True, kw_only=True):
    """``send_email`` (and the seed's ``email``): ``{"to", "subject", "body"}``."""

    to: Email
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\r\n]*$")]
    body: Annotated[str, msgspec.Meta(max_length=100_000)]


class SendSms(msgspec.Struct, frozen=True, kw_only=True):
    """``send_sms``: ``{"to": "+4915112345678", "message": "..."}`` (E.164 number)."""

    to: Annotated[str, msgspec.Meta(pattern=r"^\+[1-9]\d{6,14}$")]
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=1600)]


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """``webhook`` as in the seed: ``{"url", "method": "POST", "payload": {...}}``; the JSON
    body is ``payload``, signed (see the README's verification recipe)."""

    url: Annotated[str, msgspec.Meta(min_length=8, max_length=2048)]
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    event: Annotated[str, msgspec.Meta(max_length=100)] | None = None
