"""The Schedule model, and loading it from code declarations and ``SCHEDULES_FILE``.

Every schedule is checked when the scheduler (or a ``schedules`` command) starts: a bad cron
expression, an unknown task type, a bad time zone or priority, or a payload that fails the
task's contract stops it with a :class:`ScheduleError` naming the schedule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml
from cronsim import CronSim, CronSimError

from ..keyspace import PRIORITIES
from ..registry import Registry
from ..settings import ConfigError, Settings

__all__ = ["MisfirePolicy", "Schedule", "ScheduleError", "load_schedules", "validate_schedule"]

MisfirePolicy = Literal["skip", "run_once", "run_all"]

# Names go into Redis keys, idempotency keys and metric labels: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_encoder = msgspec.json.Encoder()


class ScheduleError(ConfigError):
    """A schedule is invalid; the message names the schedule and where it was declared."""

    def __init__(self, name: str, problem: str, *, source: str = "code") -> None:
        self.schedule = name
        variable = "SCHEDULES_FILE" if source != "code" else "schedule"
        where = f" in {source}" if source != "code" else " declared in code"
        super().__init__(variable, f"{name!r}{where}: {problem}")


class Schedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One recurring task. Cron has 5 fields, or 6 with seconds first."""

    name: str
    cron: str
    task_type: str
    payload: dict[str, Any] = {}
    priority: str = "normal"
    timezone: str = "UTC"
    enabled: bool = True
    #: What to do with occurrences missed (by more than the grace time) while no scheduler ran.
    misfire: MisfirePolicy = "skip"
    #: ``run_all`` catches up at most this many missed occurrences (the most recent ones).
    max_catch_up: int = 100
    description: str = ""
    #: Leave the schedule out (with a warning) when no handler of ``task_type`` is registered,
    #: instead of refusing to start: for schedules shipped before their handler.
    optional: bool = False

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances

    @property
    def has_seconds(self) -> bool:
        return len(self.cron.split()) == 6


def validate_schedule(schedule: Schedule, registry: Registry, *, source: str = "code") -> None:
    """Raise ScheduleError for anything that would make the schedule fail later."""

    def bad(problem: str) -> ScheduleError:
        return ScheduleError(schedule.name, problem, source=source)

    if not _NAME.match(schedule.name):
        raise bad("name must be 1-64 letters, digits, '_', '.' or '-'")
    fields = schedule.cron.split()
    if len(fields) not in (5, 6):
        raise bad(f"cron {schedule.cron!r} must have 5 fields (or 6, seconds first)")
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad(f"unknown time zone {schedule.timezone!r} (use an IANA name)") from None
    try:
        next(CronSim(schedule.cron, datetime.now(UTC).astimezone(zone)))
    except CronSimError as exc:
        raise bad(f"cron {schedule.cron!r} is invalid: {exc}") from None
    except StopIteration:
        raise bad(f"cron {schedule.cron!r} never fires") from None
    if schedule.priority not in PRIORITIES:
        raise bad(f"priority {schedule.priority!r} is not one of {', '.join(PRIORITIES)}")
    if schedule.max_catch_up < 1:
        raise bad("max_catch_up must be >= 1")
    spec = registry.get(schedule.task_type)
    if spec is None:
        raise bad(f"unknown task type {schedule.task_type!r} (no handler is registered)")
    try:
        spec.decode(_encoder.encode(schedule.payload))
    except msgspec.ValidationError as exc:
        # msgspec names the field path, never the value: safe to show.
        raise bad(f"payload does not match the {schedule.task_type} contract: {exc}") from None


def _entries_from_file(path: str) -> list[Mapping[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("SCHEDULES_FILE", f"cannot be read: {exc.strerror} ({path})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("SCHEDULES_FILE", f"is not valid YAML{where} ({path})") from None
    if document is None:
        return []
    if isinstance(document, Mapping):
        document = document.get("schedules", [])
    if not isinstance(document, list) or not all(isinstance(e, Mapping) for e in document):
        raise ConfigError(
            "SCHEDULES_FILE", f"must hold a list of schedules under 'schedules:' ({path})"
        )
    return document


def load_schedules(settings: Settings, registry: Registry, *, warn: Any = None) -> list[Schedule]:
    """Code declarations, then ``SCHEDULES_FILE`` entries; all validated.

    A file entry with the name of a code declaration overrides the fields it gives (so an
    operator can change the cron of, or disable, a default schedule without a release).
    Schedules marked ``optional`` whose task type has no handler are left out (``warn`` is
    called with their name).
    """
    merged: dict[str, tuple[dict[str, Any], str]] = {}
    for entry in registry.schedules:
        name = str(entry.get("name"))
        if name in merged:
            raise ScheduleError(name, "declared twice in code")
        merged[name] = (entry, "code")
    if settings.schedules_file:
        seen: set[str] = set()
        for raw in _entries_from_file(settings.schedules_file):
            name = str(raw.get("name", "")) or "(unnamed)"
            if name in seen:
                raise ScheduleError(name, "listed twice", source=settings.schedules_file)
            seen.add(name)
            base = merged.get(name, ({}, "code"))[0]
            merged[name] = ({**base, **raw}, settings.schedules_file)
    return list(_build_all(merged.values(), registry, warn))


def _build_all(
    entries: Iterable[tuple[dict[str, Any], str]], registry: Registry, warn: Any
) -> Iterable[Schedule]:
    for raw, source in entries:
        name = str(raw.get("name", "(unnamed)"))
        try:
            schedule = msgspec.convert(raw, Schedule)
        except msgspec.ValidationError as exc:
            raise ScheduleError(name, str(exc), source=source) from None
        if schedule.optional and schedule.task_type not in registry:
            if warn is not None:
                warn(schedule.name)
            continue
        validate_schedule(schedule, registry, source=source)
        yield schedule
