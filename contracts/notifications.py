"""Notification task contracts. Payloads carry references (user, patient, care team), not
clinical notes or contact details; delivery looks the recipient's channels up by reference
(see ``streamworker.channels.directory``).

Evolution: every field added after the first version has a default (v1 payloads — the
seed's examples — keep decoding; ``tests/test_contracts.py`` pins that).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
#: "webhook" is accepted for compatibility with v1 payloads; recipients are reached by
#: email, sms or push (the ``webhook`` task posts to systems, not people).
Channel = Literal["email", "sms", "push", "webhook"]
ReminderTime = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class TestNotification(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The seed's smoke test: ``{"message": "Test notification"}``. Without ``user_id`` it is
    delivered to the operators' log only."""

    message: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    user_id: Ref | None = None
    channels: tuple[Channel, ...] = ()


class MedicationReminder(msgspec.Struct, frozen=True, kw_only=True):
    """``send_medication_reminder`` exactly as the seed's submit example."""

    user_id: Ref
    medication_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    dosage: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    reminder_time: ReminderTime
    channels: tuple[Channel, ...] = ()


class QueuedMedicationReminder(msgspec.Struct, frozen=True, kw_only=True):
    """``medication_reminder``, the seed's queue example ``{"user_id", "message"}``; it also
    accepts the submit example's fields, so either shape may be published under this name."""

    user_id: Ref
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None
    medication_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    dosage: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    reminder_time: ReminderTime | None = None
    channels: tuple[Channel, ...] = ()


class CareAlert(msgspec.Struct, frozen=True, kw_only=True):
    """``{"patient_ref": "p-1", "alert": "fall"}`` as in CONTRACT.md §2; goes to the care team
    (``care_team_ref``, else the on-call team ``on_call``)."""

    patient_ref: Ref
    alert: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    severity: Literal["low", "medium", "high", "critical"] = "high"
    care_team_ref: Ref | None = None
    channels: tuple[Channel, ...] = ()


class WellnessCheckIn(msgspec.Struct, frozen=True, kw_only=True):
    """Ask a user how they are doing: ``{"user_id": "u-1", "check_in_type": "daily"}``."""

    user_id: Ref
    check_in_type: Literal["daily", "weekly", "post_discharge", "post_visit"] = "daily"
    channels: tuple[Channel, ...] = ()
