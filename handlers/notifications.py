"""Notification handlers: for now they write to the notification outbox stream, from which
the delivery channels (email, SMS, push) take them."""

from __future__ import annotations

from contracts import CareAlert, MedicationReminder, TestNotification
from streamworker import TaskContext, handler


@handler("test_notification", contract=TestNotification, max_retries=1)
async def test_notification(payload: TestNotification, ctx: TaskContext) -> None:
    await ctx.outbox.put(
        kind="test_notification",
        task_id=ctx.task_id,
        recipient=payload.user_id or "ops",
        channels=",".join(payload.channels) or "log",
    )


@handler("send_medication_reminder", contract=MedicationReminder, timeout_seconds=30)
async def send_medication_reminder(payload: MedicationReminder, ctx: TaskContext) -> None:
    # The outbox carries references and the reminder slot, not the medication itself: the
    # delivery channel renders the message from the user's record.
    await ctx.outbox.put(
        kind="medication_reminder",
        task_id=ctx.task_id,
        recipient=payload.user_id,
        reminder_time=payload.reminder_time,
        channels=",".join(payload.channels) or "default",
    )


@handler("care_alert", contract=CareAlert, timeout_seconds=15)
async def care_alert(payload: CareAlert, ctx: TaskContext) -> None:
    await ctx.outbox.put(
        kind="care_alert",
        task_id=ctx.task_id,
        patient_ref=payload.patient_ref,
        care_team=payload.care_team_ref or "on_call",
        alert=payload.alert,
        severity=payload.severity,
        channels=",".join(payload.channels) or "default",
    )
