"""Recurring tasks: cron schedules declared in code or in ``SCHEDULES_FILE``, published by a
scheduler that is safe to run on every replica (a leader lease, and an idempotency key per
occurrence so each is published exactly once)."""

from .control import ScheduleControl, ScheduleView, UnknownSchedule
from .lease import LeaderLease
from .occurrences import next_after, plan_due
from .schedules import Schedule, ScheduleError, load_schedules, validate_schedule
from .ticker import Clock, Scheduler, SystemClock, occurrence_key

__all__ = [
    "Clock",
    "LeaderLease",
    "Schedule",
    "ScheduleControl",
    "ScheduleError",
    "ScheduleView",
    "Scheduler",
    "SystemClock",
    "UnknownSchedule",
    "load_schedules",
    "next_after",
    "occurrence_key",
    "plan_due",
    "validate_schedule",
]
