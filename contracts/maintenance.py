"""Maintenance task contracts: the recurring housekeeping reports. Their payloads are
options only (an empty object is valid), so a schedule can publish them with ``{}``."""

from __future__ import annotations

from typing import Annotated

import msgspec


class StatusCleanupReport(msgspec.Struct, frozen=True, kw_only=True):
    """Count the task status hashes by state and by how they expire (their TTL removes them).

    ``repair_missing_ttl`` gives a finished task's hash that has no TTL (written by an old
    version, or by hand) its retention again, so it does not stay forever.
    """

    repair_missing_ttl: bool = True
    scan_batch: Annotated[int, msgspec.Meta(ge=10, le=10_000)] = 500


class DeadLetterAgeReport(msgspec.Struct, frozen=True, kw_only=True):
    """Size and age of the dead-letter stream, counts by reason and task type."""

    max_entries: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100_000
