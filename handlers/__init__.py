"""Domain handlers. Importing this package registers them with ``streamworker.handler``."""

from . import data, delivery, files, maintenance, notifications

__all__ = ["data", "delivery", "files", "maintenance", "notifications"]
