"""SSRF guard for webhook targets: only http(s) to public addresses, unless allowed.

Every address the host name resolves to must be global (not private, loopback, link-local,
multicast, reserved, unspecified, shared or documentation space; IPv4-mapped IPv6 addresses
are checked as IPv4). Limits: the check resolves the name, and the HTTP client resolves it
again when it connects, so a DNS answer that changes in between (DNS rebinding) is not caught;
a network egress policy is the complete answer (see the README).
"""

from __future__ import annotations

import ipaddress
import socket

import anyio
import httpx

from ..errors import PermanentError
from .errors import ChannelUnavailable

__all__ = ["check_target", "is_public_address"]


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_target(url: str, *, allow_private: bool) -> httpx.URL:
    """The parsed URL, or PermanentError for a target the webhook must not call."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise PermanentError("webhook URL is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise PermanentError("webhook URL must use http or https")
    host = parsed.host
    if not host:
        raise PermanentError("webhook URL has no host")
    if parsed.userinfo:
        raise PermanentError("webhook URL must not carry credentials")
    if allow_private:
        return parsed
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        # DNS may be down for a moment: retry rather than dead-letter.
        raise ChannelUnavailable("webhook host name did not resolve") from None
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise PermanentError(
            "webhook target resolves to a private, loopback or link-local address "
            "(refused; WEBHOOK_ALLOW_PRIVATE=true allows it)"
        )
    return parsed
