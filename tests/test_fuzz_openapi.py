"""Fuzz the gateway's own OpenAPI document with schemathesis: every operation, no 5xx, and
every response conforms to the document (status codes, content types, bodies, headers).

The gateway under test serves ``fake`` (an HTTP backend on the fake upstream, instant) and a
request's ``model`` is steered to it half of the time so generated bodies reach the strategy
and the upstream path, not only validation and "model not found".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess


@pytest.fixture(scope="module")
def fuzz_gateway() -> Iterator[GatewayProcess]:
    with serve_in_thread(FakeConfig(completion_tokens=4)) as (upstream, _):
        policy = {
            "version": 1,
            "backends": {"fake": {"type": "openai", "base_url": f"{upstream}/v1", "model": "fake-model",
                                  "supports_prefix_continuation": True}},
            "models": {"fake": {"type": "static", "backend": "fake"}},
        }
        process = GatewayProcess(policy, name="fuzz").start(timeout=60)
        yield process
        process.stop()


# positive_data_acceptance is left out on purpose: the gateway rejects some schema-valid
# bodies for semantic reasons the document cannot express (n > 1, a prompt longer than the
# model's context), with a 400 in OpenAI's envelope — which the checks below still verify.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.negative_data_rejection,
]


def _steer(case: Any) -> None:
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and hash(repr(body)) % 2 == 0:
        body["model"] = "fake"


def test_openapi_operations(fuzz_gateway: GatewayProcess) -> None:
    api = schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/ready"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            _steer(case)
            case.call_and_validate(timeout=30, checks=CHECKS)

        fuzz()
