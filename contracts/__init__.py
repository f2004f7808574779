"""Task contracts: one msgspec Struct per task type.

Contracts evolve compatibly: a new field always has a default, so entries written by an
older producer keep decoding; unknown fields are ignored.
"""

from .data import DataProcessing
from .maintenance import DeadLetterAgeReport, StatusCleanupReport
from .notifications import CareAlert, MedicationReminder, TestNotification

__all__ = [
    "CareAlert",
    "DataProcessing",
    "DeadLetterAgeReport",
    "MedicationReminder",
    "StatusCleanupReport",
    "TestNotification",
]
