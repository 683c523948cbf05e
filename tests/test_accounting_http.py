"""The accounting read side over HTTP, and a real request through a real gateway process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openai import OpenAI

from gateway.accounting.api import build_accounting_router
from gateway.accounting.service import AccountingService, build_accounting
from gateway.error_handlers import install_error_handlers
from tests.gateway_process import GatewayProcess
from tests.test_accounting_stores import make_record


@pytest.fixture
async def accounting_app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, AccountingService]]:
    service = build_accounting(None, tmp_path, 1000)
    await service.start()
    app = FastAPI()
    app.include_router(build_accounting_router(service))
    install_error_handlers(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http, service
    await service.close()


async def test_usage_endpoint_answers_the_documented_shape(
    accounting_app: tuple[httpx.AsyncClient, AccountingService],
) -> None:
    http, service = accounting_app
    for route, cost in (("slm", 0.0), ("slm", 0.0), ("slm>llm", 0.003)):
        await service.submit(make_record(route, cost_usd=cost, escalated=route != "slm"))
    assert await service.wait_idle()
    response = await http.get("/v1/gateway/usage", params={"since": "30m", "group_by": "route"})
    assert response.status_code == 200
    groups = response.json()["groups"]
    assert [g["key"] for g in groups] == ["slm", "slm>llm"]
    assert groups[0]["requests"] == 2 and groups[0]["escalation_rate"] == 0.0
    assert groups[1]["cost_usd"] == pytest.approx(0.003) and groups[1]["escalation_rate"] == 1.0
    assert set(groups[0]["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(groups[0]["ttft_ms"]) == {"p50", "p95"}
    iso_since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    by_backend = await http.get("/v1/gateway/usage", params={"since": iso_since, "group_by": "backend"})
    assert {g["key"] for g in by_backend.json()["groups"]} == {"slm", "llm"}


async def test_bad_queries_and_missing_records_use_the_openai_envelope(
    accounting_app: tuple[httpx.AsyncClient, AccountingService],
) -> None:
    http, _service = accounting_app
    bad_group = await http.get("/v1/gateway/usage", params={"group_by": "colour"})
    assert bad_group.status_code == 400 and bad_group.json()["error"]["param"] == "group_by"
    bad_time = await http.get("/v1/gateway/usage", params={"since": "yesterday-ish"})
    assert bad_time.status_code == 400 and bad_time.json()["error"]["param"] == "since"
    missing = await http.get("/v1/gateway/requests/req-nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


# --- a real gateway process (embedded store in its data dir) ------------------------------------


def _record(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}", timeout=5)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.1)


def test_real_request_produces_a_priced_record(client: OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="llm", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0,
    )
    completion = raw.parse()
    request_id = raw.headers["x-slm-gateway-request-id"]
    record = _record(gateway, request_id)
    assert record["request_id"] == request_id and record["route"] and not record["stream"]
    assert record["prompt_tokens"] == completion.usage.prompt_tokens  # type: ignore[union-attr]
    assert record["completion_tokens"] == completion.usage.completion_tokens  # type: ignore[union-attr]
    # llm is priced 2.50 / 10.00 USD per 1M tokens in two_tier_policy; check by hand.
    calls = record["calls"]
    expected = sum((c["prompt_tokens"] * 2.5 + c["completion_tokens"] * 10.0) / 1e6 for c in calls)
    assert expected > 0 and record["cost_usd"] == pytest.approx(expected)
    assert float(raw.headers["x-slm-gateway-cost-usd"]) == pytest.approx(record["cost_usd"], abs=1e-8)
    assert float(raw.headers["x-slm-gateway-latency-ms"]) > 0
    assert record["reference_cost_usd"] == pytest.approx(
        (record["prompt_tokens"] * 2.5 + record["completion_tokens"] * 10.0) / 1e6
    )
    assert "test-key" not in str(record)  # the client's key never lands in a record


def test_streamed_answer_is_not_free(gateway: GatewayProcess) -> None:
    body = {"model": "llm", "messages": [{"role": "user", "content": "Count to three."}],
            "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        request_id = response.headers["x-slm-gateway-request-id"]
        chunks = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "data: [DONE]"
    record = _record(gateway, request_id)
    assert record["stream"] is True
    assert record["completion_tokens"] > 0
    expected = sum((c["prompt_tokens"] * 2.5 + c["completion_tokens"] * 10.0) / 1e6 for c in record["calls"])
    assert record["cost_usd"] == pytest.approx(expected) and record["cost_usd"] > 0
    usage = httpx.get(f"{gateway.url}/v1/gateway/usage", params={"since": "1h", "group_by": "backend"}).json()
    assert any(group["key"] == "llm" and group["cost_usd"] > 0 for group in usage["groups"])
