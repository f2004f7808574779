"""The worker: reader -> runners -> acker, with the promoter beside them."""

from .server import Worker

__all__ = ["Worker"]
