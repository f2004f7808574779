"""Request checks that run before the body is read (Litestar ``before_request`` hooks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, HTTPException

__all__ = ["Check", "all_of", "json_body", "query_allowing"]

Check = Callable[[Request[Any, Any, Any]], Awaitable[None]]


async def json_body(request: Request[Any, Any, Any]) -> None:
    """415 unless the body is declared JSON; 400 for an empty one."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(
            status_code=415, detail="the body must be JSON (Content-Type: application/json)"
        )
    if request.headers.get("content-length") == "0":
        raise ClientException("the body is empty: send a JSON object")


def query_allowing(*names: str) -> Check:
    """Refuse unknown query parameters and repeated ones: a misspelt or doubled filter must not
    silently widen what a list (and a replay decided from it) covers."""
    allowed = frozenset(names)

    async def check(request: Request[Any, Any, Any]) -> None:
        seen: set[str] = set()
        for name, _ in request.query_params.multi_items():
            if name not in allowed:
                expected = f"; known: {', '.join(sorted(allowed))}" if allowed else ""
                raise ClientException(f"unknown query parameter {name!r}{expected}")
            if name in seen:
                raise ClientException(f"query parameter {name!r} is given more than once")
            seen.add(name)

    return check


def all_of(*checks: Check) -> Check:
    async def check(request: Request[Any, Any, Any]) -> None:
        for one in checks:
            await one(request)

    return check
