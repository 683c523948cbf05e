"""OpenTelemetry export end to end: a real gateway process exports by OTLP/HTTP to a receiver in
this test (tests/otlp_receiver.py decodes the protobuf), one trace per request, a span per
upstream call, GenAI attributes, and an incoming ``traceparent`` continued. Tracing off imports
no OpenTelemetry SDK module and installs no middleware."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import REPO, GatewayProcess
from tests.observability_support import ADMIN_KEY, ServedMix, mix_policy, serve_mix
from tests.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SERVER, CLIENT, ERROR = 2, 3, 2


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[ServedMix, Receiver]]:
    with otlp_receiver() as receiver, serve_in_thread(FakeConfig(completion_tokens=8)) as (url, _app):
        gateway = GatewayProcess(mix_policy(url), name="traced", env={
            "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": "gateway-under-test"}).start()
        try:
            served = serve_mix(gateway, extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
            yield served, receiver
        finally:
            gateway.stop()


def root_of(spans: list[ReceivedSpan], request_id: str) -> ReceivedSpan:
    found = [s for s in spans if s.attributes.get("slm_gateway.request_id") == request_id]
    assert len(found) == 1, [s.name for s in found]
    return found[0]


def children(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_span_id == root.span_id), key=lambda s: s.start_ns)


def test_one_trace_per_request_continuing_the_callers_traceparent(traced: tuple[ServedMix, Receiver]) -> None:
    served, receiver = traced
    ids = [request_id for group in served.request_ids.values() for request_id in group]
    spans = receiver.wait_for(lambda got: {s.attributes.get("slm_gateway.request_id") for s in got} >= set(ids))
    roots = [root_of(spans, request_id) for request_id in ids]
    for root in roots:
        assert root.kind == SERVER and root.resource["service.name"] == "gateway-under-test"
        assert root.trace_id == TRACE_ID and root.parent_span_id == PARENT_ID  # the caller's trace goes on
    assert len({root.span_id for root in roots}) == len(roots)


def test_a_cascade_that_escalated_has_a_span_per_upstream_call(traced: tuple[ServedMix, Receiver]) -> None:
    served, receiver = traced
    request_id = served.request_ids["escalated"][0]
    record = served.get(f"/v1/gateway/requests/{request_id}")
    spans = receiver.wait_for(lambda got: any(s.attributes.get("slm_gateway.request_id") == request_id for s in got))
    root = root_of(spans, request_id)
    attributes = root.attributes
    assert root.name == "chat escalated"
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "escalated"
    assert attributes["gen_ai.usage.input_tokens"] == record["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == record["completion_tokens"]
    assert attributes["gen_ai.response.model"] == "fake-model"
    assert attributes["slm_gateway.route"] == "slm>llm" and attributes["slm_gateway.escalated"] is True
    assert attributes["slm_gateway.confidence"] == pytest.approx(record["confidence"])
    assert attributes["slm_gateway.cost_usd"] == pytest.approx(record["cost_usd"])
    assert attributes["slm_gateway.savings_usd"] == pytest.approx(record["savings_usd"])
    assert attributes["http.response.status_code"] == 200 and root.status_code != ERROR

    calls = children(spans, root)
    assert [(s.kind, s.trace_id) for s in calls] == [(CLIENT, TRACE_ID)] * 2
    for span, call in zip(calls, record["calls"], strict=True):
        assert span.name == f"chat {call['model']}"
        assert span.attributes["gen_ai.request.model"] == call["model"]
        assert span.attributes["gen_ai.usage.input_tokens"] == call["prompt_tokens"]
        assert span.attributes["gen_ai.usage.output_tokens"] == call["completion_tokens"]
        assert span.attributes["slm_gateway.backend"] == call["backend"]
        assert span.attributes["slm_gateway.call.used"] is call["used"]
        assert span.attributes["slm_gateway.cost_usd"] == pytest.approx(call["cost_usd"])
        assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns
    assert [s.attributes["gen_ai.provider.name"] for s in calls] == ["local", "openai"]
    assert [s.attributes["slm_gateway.call.used"] for s in calls] == [False, True]


def test_a_failed_request_is_an_error_span(traced: tuple[ServedMix, Receiver]) -> None:
    served, receiver = traced
    request_id = served.request_ids["broken"][0]
    spans = receiver.wait_for(lambda got: any(s.attributes.get("slm_gateway.request_id") == request_id for s in got))
    root = root_of(spans, request_id)
    assert root.status_code == ERROR and root.attributes["error.type"] == "upstream_unreachable"
    (call,) = children(spans, root)
    assert call.status_code == ERROR and call.attributes["slm_gateway.backend"] == "dead"


def test_tracing_off_imports_no_sdk_and_adds_no_middleware(tmp_path: object) -> None:
    policy = f"{tmp_path}/policy.yaml"
    with open(policy, "w") as handle:
        handle.write("version: 1\nbackends: {e: {type: echo}}\nmodels: {m: {type: static, backend: e}}\n")
    code = ("import sys\nfrom gateway.app import build_app\nfrom gateway.settings import GatewaySettings\n"
            f"app = build_app(GatewaySettings(policy_path={policy!r}))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))\n"
            "print([type(m.cls).__name__ if hasattr(m, 'cls') else m for m in app.user_middleware])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    modules, middleware = out.stdout.splitlines()
    # FastAPI itself imports the OpenTelemetry *API* when it is installed (fastapi.telemetry, a
    # no-op without a global provider, which the gateway never sets); the SDK is the cost.
    assert modules == "[]"
    assert "TraceMiddleware" not in middleware


def test_settings_read_the_standard_variables() -> None:
    from gateway.telemetry.settings import TracingSettings

    assert not TracingSettings.from_env({}).enabled
    on = TracingSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "gw"})
    assert on.enabled and on.endpoint == "http://collector:4318" and on.service_name == "gw"
    traces_only = TracingSettings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert traces_only.enabled and traces_only.service_name == "slm-gateway"
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not TracingSettings.from_env(disabled).enabled
