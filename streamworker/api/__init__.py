"""The HTTP API (Litestar + msgspec), served by uvicorn: ``create_app`` and ``ApiServer``."""

from .app import create_app
from .server import ApiServer

__all__ = ["ApiServer", "create_app"]
