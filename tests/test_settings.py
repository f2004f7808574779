"""Configuration: read once, checked, one clear line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamworker import ConfigError, Settings
from tests.conftest import ROOT


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.port, s.worker_count, s.max_retries, s.notification_enabled) == (8086, 5, 3, True)
    assert (s.group, s.prefix, s.visibility_timeout_seconds, s.max_deliveries) == (
        "streamworker",
        "",
        60,
        5,
    )
    assert (s.task_timeout_seconds, s.retry_base_seconds, s.retry_max_seconds) == (30, 1, 300)
    assert (s.shutdown_grace_seconds, s.completed_ttl_seconds, s.max_payload_bytes) == (
        25,
        172800,
        1048576,
    )


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://h:1/0",
            "WORKER_COUNT": "12",
            "API_TOKENS": "a, b,,c",
            "NOTIFICATION_ENABLED": "false",
            "PRIORITY_MODE": "weighted",
            "PRIORITY_WEIGHTS": "critical=10,high=5,normal=2,low=1",
            "STREAMWORKER_PREFIX": "svc:",
        }
    )
    assert s.worker_count == 12 and s.api_tokens == ("a", "b", "c")
    assert s.notification_enabled is False and s.priority_weights == (10, 5, 2, 1)
    assert s.prefix == "svc:"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_COUNT", "abc"),
        ("WORKER_COUNT", "0"),
        ("MAX_RETRIES", "-1"),
        ("PORT", "70000"),
        ("VISIBILITY_TIMEOUT_SECONDS", "-5"),
        ("TASK_TIMEOUT_SECONDS", "inf"),
        ("NOTIFICATION_ENABLED", "maybe"),
        ("LOG_LEVEL", "loud"),
        ("PRIORITY_MODE", "random"),
        ("PRIORITY_WEIGHTS", "critical=1"),
        ("REDIS_URL", "localhost:6379"),
        ("STREAMWORKER_GROUP", "two words"),
        ("MAX_PAYLOAD_BYTES", "1MB"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_retry_cap_below_base_is_refused() -> None:
    with pytest.raises(ConfigError, match="RETRY_MAX_SECONDS"):
        Settings.from_env({"RETRY_BASE_SECONDS": "10", "RETRY_MAX_SECONDS": "5"})


def test_cli_prints_one_line_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"WORKER_COUNT"}}
    env.update({"WORKER_COUNT": "lots", "REDIS_URL": "redis://127.0.0.1:1/0"})
    result = subprocess.run(
        [sys.executable, "-m", "streamworker", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WORKER_COUNT" in lines[0]


def test_worker_without_redis_url_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "streamworker", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and len(result.stderr.strip().splitlines()) == 1
