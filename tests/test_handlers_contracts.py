"""Contracts evolve compatibly (payloads of the previous version still decode), the schema
export covers every task type, and the handler configuration is checked at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest

import handlers  # noqa: F401  (registers the domain handlers)
from streamworker import ConfigError, Settings
from streamworker.cli.schema import contract_schemas
from streamworker.registry import default_registry
from tests.conftest import ROOT

#: Payloads as producers wrote them for the first version of each contract (the seed's
#: examples among them). They must keep decoding: new fields only ever come with defaults.
PREVIOUS_VERSION: list[tuple[str, dict[str, Any]]] = [
    ("test_notification", {"message": "Test notification"}),
    ("test_notification", {"message": "hi", "user_id": "u-1", "channels": ["email", "webhook"]}),
    (
        "send_medication_reminder",
        {
            "user_id": "123e4567-e89b-12d3-a456-426614174000",
            "medication_name": "Lisinopril",
            "dosage": "10mg",
            "reminder_time": "14:00",
        },
    ),
    ("medication_reminder", {"user_id": "123e4567", "message": "Take your pills"}),
    ("care_alert", {"patient_ref": "p-1", "alert": "fall"}),
    (
        "care_alert",
        {
            "patient_ref": "p-1",
            "alert": "fall",
            "severity": "critical",
            "care_team_ref": "team-4",
            "channels": ["sms"],
        },
    ),
    ("data_processing", {"numbers": [1, 2, 3], "operation": "average"}),
    ("data_processing", {"operation": "sum", "data": [1, 2, 3, 4, 5]}),  # the seed's shape
    ("email", {"to": "user@example.com", "subject": "Welcome!", "body": "Thanks for signing up"}),
    (
        "webhook",
        {
            "url": "https://api.example.com/notify",
            "method": "POST",
            "payload": {"event": "user_created"},
        },
    ),
    ("file_cleanup", {"file_path": "/tmp/uploads", "max_age_hours": 24}),
    (
        "report_generation",
        {"report_type": "task_summary", "start_date": "2024-01-01", "end_date": "2024-01-31"},
    ),
    ("wellness_check_in", {"user_id": "u-1"}),
    ("send_sms", {"to": "+4915112345678", "message": "hi"}),
    ("data_export", {"rows": [{"a": 1}], "format": "csv"}),
]


@pytest.mark.parametrize(("task_type", "payload"), PREVIOUS_VERSION)
def test_previous_version_payloads_still_decode(task_type: str, payload: dict[str, Any]) -> None:
    spec = default_registry.get(task_type)
    assert spec is not None and spec.contract is not None
    decoded = spec.decode(json.dumps(payload).encode())
    assert isinstance(decoded, spec.contract)
    # the exported schema accepts it as well
    jsonschema_rs.validate(contract_schemas(default_registry)[task_type], payload)


def test_unknown_fields_from_a_newer_producer_are_ignored() -> None:
    spec = default_registry.get("care_alert")
    assert spec is not None
    decoded = spec.decode(b'{"patient_ref": "p-1", "alert": "fall", "added_in_v3": true}')
    assert decoded.alert == "fall"


@pytest.mark.parametrize(
    ("task_type", "payload", "field"),
    [
        (
            "send_medication_reminder",
            {"user_id": "u", "medication_name": "x", "dosage": "1", "reminder_time": "25:00"},
            "reminder_time",
        ),
        ("send_email", {"to": "not-an-address", "subject": "s", "body": "b"}, "to"),
        ("send_email", {"to": "a@b.c", "subject": "s\r\nBcc: x@y.z", "body": "b"}, "subject"),
        ("webhook", {"url": "https://x.example", "method": "DELETE"}, "method"),
        ("file_cleanup", {"file_path": "x", "max_age_hours": 0}, "max_age_hours"),
        ("report_generation", {"report_type": "sales"}, "report_type"),
        ("data_export", {"export_name": "../../etc/passwd"}, "export_name"),
    ],
)
def test_bad_payloads_name_the_field(task_type: str, payload: dict[str, Any], field: str) -> None:
    spec = default_registry.get(task_type)
    assert spec is not None
    with pytest.raises(msgspec.ValidationError, match=field):
        spec.decode(json.dumps(payload).encode())


def test_schema_export_writes_one_schema_per_task_type(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamworker", "schema", "export", "--out", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "index.json").read_text())
    expected = {
        "care_alert", "data_export", "data_processing", "email", "file_cleanup",
        "medication_reminder", "report_generation", "send_email", "send_medication_reminder",
        "send_sms", "test_notification", "webhook", "wellness_check_in",
    }  # fmt: skip
    assert expected <= set(index)
    schema = json.loads((tmp_path / "send_medication_reminder.schema.json").read_text())
    jsonschema_rs.Draft202012Validator(schema)  # raises for an invalid schema
    required = schema["$defs"]["MedicationReminder"]["required"]
    assert set(required) == {"user_id", "medication_name", "dosage", "reminder_time"}


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("SMTP_PORT", "smtp", "integer"),
        ("SMTP_TLS", "maybe", "true or false"),
        ("SMS_GATEWAY_URL", "gateway.local/sms", "http"),
        ("NOTIFICATION_SERVICE_URL", "ftp://x", "http"),
        ("RATE_LIMITS", "sms=fast", "sms=10"),
        ("RATE_LIMITS", "sms=0", "sms=10"),
        ("BREAKER_FAILURE_RATIO", "1.5", "<= 1"),
        ("BREAKER_FAILURE_THRESHOLD", "0", "integer"),
        ("HTTP_TIMEOUT_SECONDS", "-1", "number"),
    ],
)
def test_bad_handler_configuration_names_the_variable(
    variable: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=variable) as error:
        Settings.from_env({variable: value})
    assert problem in str(error.value)


def test_handler_configuration_is_read() -> None:
    s = Settings.from_env(
        {
            "SMTP_HOST": "mail.internal",
            "SMTP_TLS": "true",
            "RATE_LIMITS": "sms=10, email=2.5",
            "WEBHOOK_ALLOW_PRIVATE": "yes",
            "SMS_GATEWAY_URL": "https://sms.example/send/",
        }
    )
    assert s.smtp_host == "mail.internal" and s.smtp_tls and s.smtp_port is None
    assert s.rate_limits == (("email", 2.5), ("sms", 10.0))
    assert s.webhook_allow_private and s.sms_gateway_url == "https://sms.example/send"
    with pytest.raises(ConfigError, match="SMTP_STARTTLS"):
        Settings.from_env({"SMTP_TLS": "true", "SMTP_STARTTLS": "true"})
    assert "password" not in repr(Settings(smtp_password="password", sms_api_key="k1"))
