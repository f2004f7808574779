"""Domain handlers. Importing this package registers them with ``streamworker.handler``."""

from . import data, maintenance, notifications

__all__ = ["data", "maintenance", "notifications"]
