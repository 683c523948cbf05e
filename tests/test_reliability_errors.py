"""Issue 18, the smaller items, through real gateway processes.

* An error produced after routing carries ``x-slm-gateway-request-id`` (and its record exists).
* An upstream's 400 / 401 / 403 / 404 / 422 is a client or configuration error: never retried,
  and it never opens the circuit breaker (so later requests still reach the upstream).
* With auth on, ``/metrics``, ``/docs`` and ``/openapi.json`` need the admin key (401 without a
  key, 403 with a virtual key) unless ``SLM_GATEWAY_OPEN_METRICS`` / ``SLM_GATEWAY_OPEN_DOCS``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway_process import GatewayProcess
from tests.test_keys_support import ADMIN_KEY, admin_headers, create_key, dead_url, serve_asgi

CLIENT_STATUSES = (400, 401, 403, 404, 422)
ROUNDS = 4  # requests per status; the breaker below opens after 2 failures


class StatusUpstream:
    """Answers each generation with the HTTP status its model name ends with (``m404`` -> 404)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        model = str(orjson.loads(body).get("model")) if body else ""
        self.calls[model] += 1
        payload = orjson.dumps({"error": {"message": "no", "type": "invalid_request_error"}})
        await send({"type": "http.response.start", "status": int(model[1:]),
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, StatusUpstream]]:
    app = StatusUpstream()
    with serve_asgi(app) as url:
        yield url, app


def _backend(url: str, model: str) -> dict[str, Any]:
    return {"type": "openai", "base_url": f"{url}/v1", "model": model,
            "timeouts": {"connect": 1.0, "first_token": 5.0, "total": 10.0, "idle": 5.0},
            "retry": {"max_attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
            "circuit_breaker": {"failure_threshold": 2, "window": 4, "cooldown_s": 60.0}}


@pytest.fixture(scope="module")
def gateway(upstream: tuple[str, StatusUpstream]) -> Iterator[GatewayProcess]:
    backends = {f"b{status}": _backend(upstream[0], f"m{status}") for status in CLIENT_STATUSES}
    backends["dead"] = _backend(dead_url(), "m503")
    models = {f"a{status}": {"type": "static", "backend": f"b{status}"} for status in CLIENT_STATUSES}
    models["dead"] = {"type": "static", "backend": "dead"}
    process = GatewayProcess({"version": 1, "backends": backends, "models": models}, name="errors")
    try:
        yield process.start(timeout=60)
    finally:
        process.stop()


def test_an_error_after_routing_carries_the_request_id(gateway: GatewayProcess) -> None:
    for stream in (False, True):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
            "model": "dead", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        code = response.json()["error"]["code"]
        assert response.status_code == 503 and code in ("upstream_unreachable", "circuit_open"), response.text
        request_id = response.headers["x-slm-gateway-request-id"]
        deadline = time.monotonic() + 10
        found = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}", timeout=10)
        while found.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            found = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}", timeout=10)
        assert found.status_code == 200 and found.json()["status"] == code


def test_client_errors_are_not_retried_and_never_open_the_circuit(
    gateway: GatewayProcess, upstream: tuple[str, StatusUpstream]
) -> None:
    for status in CLIENT_STATUSES:
        for _ in range(ROUNDS):
            response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
                "model": f"a{status}", "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code in (400, 502), response.text
            assert response.json()["error"]["code"] != "circuit_open", (status, response.text)
    assert {model: upstream[1].calls[model] for model in (f"m{s}" for s in CLIENT_STATUSES)} == {
        f"m{s}": ROUNDS for s in CLIENT_STATUSES}  # each request reached the upstream exactly once
    circuits = httpx.get(f"{gateway.url}/ready", timeout=10).json()["circuits"]
    assert {name: circuits[f"b{s}"] for s in CLIENT_STATUSES for name in [f"b{s}"]} == {
        f"b{s}": "closed" for s in CLIENT_STATUSES}


@pytest.fixture(scope="module")
def guarded_pair() -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    policy = {"version": 1, "backends": {"llm": _backend(dead_url(), "m")},
              "models": {"llm": {"type": "static", "backend": "llm"}}}
    closed = GatewayProcess(policy, name="admin-paths", env={"SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY})
    opened = GatewayProcess(policy, name="open-paths", env={
        "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "SLM_GATEWAY_OPEN_METRICS": "1", "SLM_GATEWAY_OPEN_DOCS": "1"})
    try:
        yield closed.start(timeout=60), opened.start(timeout=60)
    finally:
        closed.stop()
        opened.stop()


def test_metrics_and_docs_need_the_admin_key_unless_opened(guarded_pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    closed, opened = guarded_pair
    virtual = {"authorization": f"Bearer {create_key(closed.url)['key']}"}
    for path in ("/metrics", "/docs", "/openapi.json"):
        missing = httpx.get(f"{closed.url}{path}", timeout=10)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key", path
        denied = httpx.get(f"{closed.url}{path}", headers=virtual, timeout=10)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_only", path
        assert httpx.get(f"{closed.url}{path}", headers=admin_headers(), timeout=10).status_code == 200, path
        assert httpx.get(f"{opened.url}{path}", timeout=10).status_code == 200, path
    for probe in ("/health", "/ready"):  # probes carry no keys
        assert httpx.get(f"{closed.url}{probe}", timeout=10).status_code in (200, 503)
