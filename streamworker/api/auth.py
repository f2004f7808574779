"""Service-token authentication for every ``/api/`` route (CONTRACT.md §7).

``Authorization: Bearer <token>`` must match one of ``API_TOKENS``. Both sides are hashed
first, so the comparison always covers equal-length digests, and every configured token is
compared (no early exit), so the time taken says nothing about which token came close.
A refusal says only that the token is missing or invalid.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

__all__ = ["BEARER_SCHEME", "TokenGuard"]

#: Name of the security scheme in the OpenAPI document.
BEARER_SCHEME = "BearerToken"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenGuard:
    """A Litestar guard; with no tokens configured (``--insecure-no-auth``) it lets all in."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(t) for t in tokens if t)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return False
        given = _digest(credentials.strip())
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        return matched

    async def __call__(self, connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        if self.enabled and not self.accepts(connection.headers.get("authorization")):
            raise NotAuthorizedException(
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="streamworker"'},
            )
