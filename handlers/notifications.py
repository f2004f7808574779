"""Notification handlers: resolve the recipient's channels, then deliver through each one.

Every channel send goes through ``ctx.services.deliver``: done once per task (a redelivered
reminder is not sent again on a channel that already took it), rate-limited and guarded by the
channel's circuit breaker (an outage defers the task instead of failing it). With
``NOTIFICATION_ENABLED=false`` the task completes as skipped and nothing is sent.

Texts name the medication or alert code only in the message to the recipient; logs, metrics
and error messages carry channel names and counts, never content.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from contracts import (
    CareAlert,
    MedicationReminder,
    QueuedMedicationReminder,
    TestNotification,
    WellnessCheckIn,
)
from streamworker import PermanentError, TaskContext, handler
from streamworker.channels import Services
from streamworker.channels.email import OutgoingEmail

_DISABLED = "notifications disabled (NOTIFICATION_ENABLED=false)"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str
    recipient_ref: str
    subject: str
    text: str
    channels: tuple[str, ...] = ()


async def notify(notice: Notice, ctx: TaskContext) -> int:
    """Deliver ``notice`` on each of the recipient's channels; returns how many were sent now
    (channels already done by an earlier attempt are not sent again)."""
    services = ctx.services
    if not services.settings.notification_enabled:
        await services.mark_skipped(ctx.task_id, ctx.task_type, _DISABLED)
        return 0
    contact = await services.directory.resolve(notice.recipient_ref, channels=notice.channels)
    if not contact.channels:
        raise PermanentError("the recipient has no delivery channel")
    sent = 0
    for channel in dict.fromkeys(contact.channels):  # each channel once, in order
        if channel == "email":
            send = _email_sender(services, notice, contact.email, ctx.task_id)
        elif channel == "sms":
            send = _sms_sender(services, notice, contact.phone, ctx.task_id)
        elif channel == "push":
            send = _push_sender(services, notice, ctx.task_id)
        elif channel == "outbox":
            send = _outbox_sender(ctx, notice)
        else:
            raise PermanentError(
                f"channel {channel!r} cannot reach a person (use email, sms, push)"
            )
        sent += int(await services.deliver(channel, send, task_id=ctx.task_id))
    ctx.logger.info(
        "notification_delivered",
        extra={"kind": notice.kind, "channels": ",".join(contact.channels), "sent": sent},
    )
    return sent


Send = Callable[[], Awaitable[None]]


def _email_sender(services: Services, notice: Notice, address: str | None, task_id: str) -> Send:
    if not address:
        raise PermanentError("email chosen but the recipient has no address")
    mail = OutgoingEmail(
        to=address, subject=notice.subject, body=notice.text, reference=f"{task_id}.email"
    )
    email = services.email  # not configured: refused before anything is claimed

    async def send() -> None:
        await email.send(mail)

    return send


def _sms_sender(services: Services, notice: Notice, phone: str | None, task_id: str) -> Send:
    if not phone:
        raise PermanentError("sms chosen but the recipient has no phone number")
    sms = services.sms

    async def send() -> None:
        await sms.send(to=phone, message=notice.text, reference=f"{task_id}.sms")

    return send


def _push_sender(services: Services, notice: Notice, task_id: str) -> Send:
    push = services.push

    async def send() -> None:
        await push.send(
            recipient_ref=notice.recipient_ref,
            kind=notice.kind,
            title=notice.subject,
            body=notice.text,
            reference=f"{task_id}.push",
        )

    return send


def _outbox_sender(ctx: TaskContext, notice: Notice) -> Send:
    async def send() -> None:
        # References only: the outside delivery process renders the text from its records.
        await ctx.outbox.put(kind=notice.kind, task_id=ctx.task_id, recipient=notice.recipient_ref)

    return send


@handler("test_notification", contract=TestNotification, max_retries=1)
async def test_notification(payload: TestNotification, ctx: TaskContext) -> int:
    if payload.user_id is None:
        # No recipient: the smoke test is "delivered" to the operators' log.
        if not ctx.services.settings.notification_enabled:
            await ctx.services.mark_skipped(ctx.task_id, ctx.task_type, _DISABLED)
            return 0
        ctx.logger.info("test_notification_delivered", extra={"channels": "log"})
        return 1
    notice = Notice(
        kind="test_notification",
        recipient_ref=payload.user_id,
        subject="Test notification",
        text=payload.message,
        channels=payload.channels,
    )
    return await notify(notice, ctx)


def _reminder_text(medication: str | None, dosage: str | None, at: str | None) -> str:
    what = " ".join(part for part in (medication, dosage) if part) or "your medication"
    when = f" at {at}" if at else ""
    return f"Reminder: time to take {what}{when}."


@handler("send_medication_reminder", contract=MedicationReminder, timeout_seconds=30)
async def send_medication_reminder(payload: MedicationReminder, ctx: TaskContext) -> int:
    notice = Notice(
        kind="medication_reminder",
        recipient_ref=payload.user_id,
        subject="Medication reminder",
        text=_reminder_text(payload.medication_name, payload.dosage, payload.reminder_time),
        channels=payload.channels,
    )
    return await notify(notice, ctx)


@handler("medication_reminder", contract=QueuedMedicationReminder, timeout_seconds=30)
async def medication_reminder(payload: QueuedMedicationReminder, ctx: TaskContext) -> int:
    text = payload.message or _reminder_text(
        payload.medication_name, payload.dosage, payload.reminder_time
    )
    notice = Notice(
        kind="medication_reminder",
        recipient_ref=payload.user_id,
        subject="Medication reminder",
        text=text,
        channels=payload.channels,
    )
    return await notify(notice, ctx)


@handler("care_alert", contract=CareAlert, timeout_seconds=15)
async def care_alert(payload: CareAlert, ctx: TaskContext) -> int:
    notice = Notice(
        kind="care_alert",
        recipient_ref=payload.care_team_ref or "on_call",
        subject=f"Care alert ({payload.severity}): {payload.alert}",
        text=(
            f"Care alert, severity {payload.severity}: {payload.alert} for patient "
            f"{payload.patient_ref}. Open the care dashboard for details."
        ),
        channels=payload.channels,
    )
    return await notify(notice, ctx)


_CHECK_IN_TEXT = {
    "daily": "How are you feeling today? Tap to complete your daily check-in.",
    "weekly": "Time for your weekly wellness check-in.",
    "post_discharge": "We hope your recovery is going well. Please complete your check-in.",
    "post_visit": "How did your visit go? Please complete a short check-in.",
}


@handler("wellness_check_in", contract=WellnessCheckIn, timeout_seconds=30)
async def wellness_check_in(payload: WellnessCheckIn, ctx: TaskContext) -> int:
    notice = Notice(
        kind="wellness_check_in",
        recipient_ref=payload.user_id,
        subject="Wellness check-in",
        text=_CHECK_IN_TEXT[payload.check_in_type],
        channels=payload.channels,
    )
    return await notify(notice, ctx)
