"""Task contracts: one msgspec Struct per task type.

Contracts evolve compatibly: a new field always has a default, so entries written by an
older producer keep decoding; unknown fields are ignored.
"""

from .data import DataExport, DataProcessing, ReportGeneration
from .delivery import SendEmail, SendSms, Webhook
from .files import FileCleanup
from .maintenance import DeadLetterAgeReport, StatusCleanupReport
from .notifications import (
    CareAlert,
    MedicationReminder,
    QueuedMedicationReminder,
    TestNotification,
    WellnessCheckIn,
)

__all__ = [
    "CareAlert",
    "DataExport",
    "DataProcessing",
    "DeadLetterAgeReport",
    "FileCleanup",
    "MedicationReminder",
    "QueuedMedicationReminder",
    "ReportGeneration",
    "SendEmail",
    "SendSms",
    "StatusCleanupReport",
    "TestNotification",
    "Webhook",
    "WellnessCheckIn",
]
