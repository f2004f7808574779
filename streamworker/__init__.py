"""streamworker: an event-driven task consumer on Redis Streams.

The public surface is what ``__all__`` lists; everything else may change.
"""

from .context import TaskContext
from .errors import Defer, InvalidTask, PermanentError, Retry, RetryableError, StreamworkerError
from .keyspace import PRIORITIES, Keyspace
from .producer import Producer, SyncProducer, TaskSpec
from .registry import Registry, handler
from .settings import ConfigError, Settings
from .worker import Worker

__all__ = [
    "PRIORITIES",
    "ConfigError",
    "Defer",
    "InvalidTask",
    "Keyspace",
    "PermanentError",
    "Producer",
    "Registry",
    "Retry",
    "RetryableError",
    "Settings",
    "StreamworkerError",
    "SyncProducer",
    "TaskContext",
    "TaskSpec",
    "Worker",
    "handler",
]

__version__ = "0.1.0"
