"""Domain handlers. Importing this package registers them with ``streamworker.handler``."""

from . import data, notifications

__all__ = ["data", "notifications"]
