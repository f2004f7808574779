"""One small adapter per system under test.

Each adapter module defines ``NAME``, ``DISTRIBUTION`` (whose version is recorded),
``WORKLOADS`` (the workloads it supports), ``worker_argv(python, concurrency)`` (the worker
subprocess, started with the system's own command line where it has one), ``BATCH`` (whether
it can publish a batch in one call) and ``publisher(url)``: an async context manager with
``one(payload)`` and, when ``BATCH``, ``many(payloads)``. Every task runs the same body:
``probe.start(payload)``, sleep ``payload["s"]`` seconds if given, ``probe.finish()``.
Optionally ``SKIP``: run labels (e.g. ``"D256"``) known not to finish, with the reason, which
the table notes instead of waiting out a timeout on every run. Optionally ``LABEL``: the
system's name in the table, when it is not ``NAME``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ORDER = (
    "streamworker",
    "streamworker_lean",
    "ceiling",
    "streaq",
    "taskiq",
    "arq",
    "saq",
    "dramatiq",
)


def load(name: str) -> ModuleType:
    if name not in ORDER:
        raise SystemExit(f"unknown peer {name!r}; expected one of {', '.join(ORDER)}")
    return importlib.import_module(f"bench.peers.{name}_peer")
