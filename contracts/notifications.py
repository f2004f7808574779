"""Notification task contracts. Payloads carry references (user, patient, care team), not
clinical notes; delivery looks contact details up by reference."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Channel = Literal["email", "sms", "push", "webhook"]


class TestNotification(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The seed's smoke test: ``{"message": "Test notification"}``."""

    message: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    user_id: Ref | None = None
    channels: tuple[Channel, ...] = ()


class MedicationReminder(msgspec.Struct, frozen=True, kw_only=True):
    """``send_medication_reminder`` exactly as the seed's submit example."""

    user_id: Ref
    medication_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    dosage: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    reminder_time: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    channels: tuple[Channel, ...] = ()


class CareAlert(msgspec.Struct, frozen=True, kw_only=True):
    """``{"patient_ref": "p-1", "alert": "fall"}`` as in CONTRACT.md §2."""

    patient_ref: Ref
    alert: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    severity: Literal["low", "medium", "high", "critical"] = "high"
    care_team_ref: Ref | None = None
    channels: tuple[Channel, ...] = ()
