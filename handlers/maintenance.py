"""Maintenance handlers and the seed's recurring jobs (run by ``streamworker scheduler``).

* ``status_cleanup_report`` (hourly): the status hashes by state, how many will expire (their
  TTL removes finished tasks after COMPLETED_TTL_SECONDS) and how many are still live;
  re-arms the TTL of a finished task's hash that lost it.
* ``dead_letter_age_report`` (hourly): dead-letter count, oldest and newest age, by reason.
* ``daily_report`` (06:00 UTC): the ``report_generation`` task, whose handler lives in another
  module; the schedule is ``optional``, so it is active only where that handler is registered.

The reports are logged as counts only (never a task id or payload) and returned.
"""

from __future__ import annotations

from typing import Any

from contracts import DeadLetterAgeReport, StatusCleanupReport
from streamworker import TaskContext, handler
from streamworker.registry import default_registry


@handler(
    "status_cleanup_report",
    contract=StatusCleanupReport,
    max_retries=1,
    timeout_seconds=600,
    schedules=[
        {
            "name": "status_cleanup_report",
            "cron": "15 * * * *",
            "priority": "low",
            "description": "Status hashes by state and expiry; re-arm lost TTLs",
        }
    ],
)
async def status_cleanup_report(payload: StatusCleanupReport, ctx: TaskContext) -> dict[str, Any]:
    summary = await ctx.maintenance.status_summary(
        repair=payload.repair_missing_ttl, batch=payload.scan_batch
    )
    ctx.logger.info(
        "status_cleanup_report",
        extra={
            "scanned": summary.scanned,
            "expiring": summary.expiring,
            "expiring_within_24h": summary.expiring_within_24h,
            "without_ttl": summary.without_ttl,
            "repaired": summary.repaired,
            **{f"state_{state}": count for state, count in summary.by_state.items()},
        },
    )
    return {
        "scanned": summary.scanned,
        "by_state": summary.by_state,
        "expiring": summary.expiring,
        "expiring_within_24h": summary.expiring_within_24h,
        "without_ttl": summary.without_ttl,
        "repaired": summary.repaired,
    }


@handler(
    "dead_letter_age_report",
    contract=DeadLetterAgeReport,
    max_retries=1,
    timeout_seconds=600,
    schedules=[
        {
            "name": "dead_letter_age_report",
            "cron": "45 * * * *",
            "priority": "low",
            "description": "Dead letters: count, oldest and newest age, by reason",
        }
    ],
)
async def dead_letter_age_report(payload: DeadLetterAgeReport, ctx: TaskContext) -> dict[str, Any]:
    summary = await ctx.maintenance.dead_letter_summary(max_entries=payload.max_entries)
    ctx.logger.info(
        "dead_letter_age_report",
        extra={
            "total": summary.total,
            "examined": summary.examined,
            "oldest_age_seconds": summary.oldest_age_seconds,
            "newest_age_seconds": summary.newest_age_seconds,
            **{f"reason_{reason}": count for reason, count in summary.by_reason.items()},
        },
    )
    return {
        "total": summary.total,
        "examined": summary.examined,
        "oldest_age_seconds": summary.oldest_age_seconds,
        "newest_age_seconds": summary.newest_age_seconds,
        "by_reason": summary.by_reason,
        "by_task_type": summary.by_task_type,
    }


# The daily report's handler (``report_generation``) is another module's; its contract gives
# every field a default, so ``{}`` is a valid payload.
default_registry.add_schedule(
    "report_generation",
    {
        "name": "daily_report",
        "cron": "0 6 * * *",
        "priority": "low",
        "misfire": "run_once",
        "optional": True,
        "description": "Daily task summary report (when report_generation is registered)",
    },
)
