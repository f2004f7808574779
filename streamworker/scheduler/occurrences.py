"""When a schedule fires, and what is due after a gap (the misfire policies).

Times are whole epoch seconds in UTC; cron expressions are evaluated in the schedule's time
zone by cronsim, which follows Debian cron around daylight-saving changes:

* a job at a fixed local time (minute and hour fields not starting with ``*``, 5 fields) whose
  time does not exist on the spring-forward day runs once, right after the jump (``30 2 * * *``
  in Europe/Berlin runs at 03:00 CEST on that day); on the fall-back day it runs once, at the
  first of the two 02:30s;
* any other expression (``*/15 * * * *``, 6-field expressions) follows elapsed time: in the
  repeated hour it fires in both passes, in the skipped hour it does not fire.

A fire time is only ever accepted when it is later than the previous one, so a repeated local
hour can never make a schedule fire an earlier occurrence again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from cronsim import CronSim

from .schedules import Schedule

__all__ = ["Plan", "next_after", "occurrences_between", "plan_due"]

#: Bound on cron steps when counting missed occurrences (a per-second schedule after a day
#: down has 86,400): beyond it the skipped count is reported as at least this.
COUNT_LIMIT = 10_000
# Bound on steps that may go "backwards" in local time around a fall-back hour.
_MAX_STALE_STEPS = 10_000


def _iterate(schedule: Schedule, after: int, *, reverse: bool = False) -> CronSim:
    start = datetime.fromtimestamp(after, schedule.zone)
    return CronSim(schedule.cron, start, reverse=reverse)


def next_after(schedule: Schedule, after: int) -> int | None:
    """The first occurrence strictly after ``after``; None if the expression never fires."""
    found = occurrences_between(schedule, after, None, 1)
    return found[0] if found else None


def occurrences_between(schedule: Schedule, after: int, until: int | None, limit: int) -> list[int]:
    """Occurrences in ``(after, until]`` (no upper bound for None), oldest first, at most
    ``limit``."""
    out: list[int] = []
    last = after
    stale = 0
    it = _iterate(schedule, after)
    while len(out) < limit:
        try:
            ts = int(next(it).timestamp())
        except StopIteration:
            break
        if until is not None and ts > until:
            break
        if ts <= last:
            # A fixed-local-time job evaluated inside a repeated hour maps back onto the
            # first pass, which is already past: keep going.
            stale += 1
            if stale > _MAX_STALE_STEPS:
                break
            continue
        out.append(ts)
        last = ts
    return out


def _latest(schedule: Schedule, after: int, until: int, count: int) -> list[int]:
    """The ``count`` most recent occurrences in ``(after, until]``, oldest first."""
    found: deque[int] = deque()
    it = _iterate(schedule, until + 1, reverse=True)  # reverse yields times < its start
    while len(found) < count:
        try:
            ts = int(next(it).timestamp())
        except StopIteration:
            break
        if ts <= after:
            break
        if ts > until or (found and ts >= found[0]):
            continue  # a repeated local hour seen twice
        found.appendleft(ts)
    return list(found)


@dataclass(slots=True)
class Plan:
    """What one tick does for one schedule."""

    fire: list[int] = field(default_factory=list)  # oldest first
    skipped: int = 0  # missed occurrences dropped by the misfire policy
    skipped_at_least: bool = False  # True when ``skipped`` hit COUNT_LIMIT
    caught_up: int = 0  # late occurrences fired anyway (run_once / run_all)


def plan_due(schedule: Schedule, cursor: int, now: int, grace: float) -> Plan:
    """Occurrences in ``(cursor, now]``: those at most ``grace`` seconds late fire; older ones
    are misfires, handled by the schedule's policy (``skip``: drop them; ``run_once``: fire
    the most recent one; ``run_all``: fire the most recent ``max_catch_up``, drop the rest).
    """
    plan = Plan()
    if now <= cursor:
        return plan
    late_until = int(now - grace)
    on_time_from = max(cursor, late_until)
    if late_until > cursor:
        missed = occurrences_between(schedule, cursor, late_until, COUNT_LIMIT)
        total_missed = len(missed)
        plan.skipped_at_least = total_missed >= COUNT_LIMIT
        keep = {"skip": 0, "run_once": 1, "run_all": schedule.max_catch_up}[schedule.misfire]
        if keep and missed:
            if plan.skipped_at_least:
                catch_up = _latest(schedule, cursor, late_until, keep)
            else:
                catch_up = missed[-keep:]
            plan.fire.extend(catch_up)
            plan.caught_up = len(catch_up)
        plan.skipped = max(0, total_missed - plan.caught_up)
    plan.fire.extend(occurrences_between(schedule, on_time_from, now, COUNT_LIMIT))
    return plan
