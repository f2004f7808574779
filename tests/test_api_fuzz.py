"""Schemathesis against the served OpenAPI document: generated requests, valid and invalid,
never get a 500, and every answer matches the document (status codes, content types, bodies).

Schema-valid is not always acceptable, by design: the payload must also match its task type's
contract (known at run time, per type) and a replay needs exactly one selection; both are
documented 400s, so the "valid data is accepted" check is left out.

Each operation gets a bounded hypothesis run of its own. The server runs in a thread of its
own because schemathesis calls it synchronously.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.openapi import from_url
from schemathesis.specs.openapi.checks import positive_data_acceptance

from streamworker import Settings
from streamworker.embedded import EmbeddedRedis
from tests.api_helpers import TOKEN, ThreadedApi

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served_api(redis_server: EmbeddedRedis) -> Iterator[ThreadedApi]:
    settings = Settings(
        redis_url=redis_server.url,
        prefix=f"fz{uuid.uuid4().hex[:8]}:",
        api_tokens=(TOKEN,),
        max_payload_bytes=64 * 1024,
    )
    with ThreadedApi(settings) as api:
        yield api


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_answers_match_its_openapi_document(
    served_api: ThreadedApi, mode: GenerationMode
) -> None:
    schema = from_url(f"{served_api.url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        raw = operation.definition.raw
        if mode is GenerationMode.NEGATIVE and not (
            raw.get("parameters") or raw.get("requestBody")
        ):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(
            max_examples=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=served_api.url, headers=AUTH, excluded_checks=[positive_data_acceptance]
            )

        check()
