"""Secrets and prompts stay out of errors, logs, records and /metrics.

The fake upstream here behaves like a real cloud API at its worst: its 401 and 500 error
messages echo the ``Authorization`` header it received (OpenAI's 401 quotes part of the key).
The gateway gets the upstream key from an environment variable set to a sentinel; the test
checks the upstream really received the sentinel (so the test can fail), then greps every
response, the gateway's log, every file of its data dir (the SQLite records, the spool) and
/metrics for it. The prompt, too, must not be logged or stored (``store_prompts`` is off).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway_process import GatewayProcess
from tests.test_keys_support import ADMIN_KEY, QuotingUpstream, admin_headers, serve_asgi

SENTINEL = "sk-upstream-SENTINEL-7f3a9c1e5b"
PROMPT = "my secret plan is PROMPT-MARKER-42"


class LeakyUpstream(QuotingUpstream):
    """Answers every generation with an error that quotes the bearer token it was sent."""

    def reply(self, authorization: str, body: bytes) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        model = orjson.loads(body).get("model") if body else ""
        status = 401 if model == "m401" else 500
        payload = {"error": {"message": f"Incorrect API key provided: {authorization} (upstream {status})",
                             "type": "invalid_request_error", "code": "invalid_api_key"}}
        return status, payload, [(b"x-echo", authorization.encode())]


@pytest.fixture(scope="module")
def leaky() -> Iterator[tuple[str, LeakyUpstream]]:
    app = LeakyUpstream()
    with serve_asgi(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def gateway(leaky: tuple[str, LeakyUpstream]) -> Iterator[GatewayProcess]:
    def backend(model: str) -> dict[str, Any]:
        return {"type": "openai", "base_url": f"{leaky[0]}/v1", "model": model, "api_key_env": "LEAKY_UPSTREAM_KEY",
                "price": {"input_per_1m": 1.0, "output_per_1m": 1.0},
                "timeouts": {"connect": 2.0, "first_token": 10.0, "total": 20.0, "idle": 10.0}}

    policy = {"version": 1, "backends": {"b401": backend("m401"), "b500": backend("m500")},
              "models": {"a401": {"type": "static", "backend": "b401"}, "a500": {"type": "static", "backend": "b500"}}}
    process = GatewayProcess(policy, name="hygiene",
                             env={"LEAKY_UPSTREAM_KEY": SENTINEL, "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY})
    try:
        yield process.start()
    finally:
        process.stop()


def _texts(response: httpx.Response) -> str:
    return response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())


def test_upstream_key_never_leaks(gateway: GatewayProcess, leaky: tuple[str, LeakyUpstream]) -> None:
    seen: list[str] = []
    for model in ("a401", "a500"):
        for stream in (False, True):
            body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=admin_headers(),
                                  timeout=30)
            assert response.status_code >= 400 or "error" in response.text, response.text
            seen.append(_texts(response))
        response = httpx.post(f"{gateway.url}/v1/completions", json={"model": model, "prompt": PROMPT},
                              headers=admin_headers(), timeout=30)
        seen.append(_texts(response))
    assert any(f"Bearer {SENTINEL}" == a for a in leaky[1].authorizations)  # the upstream got the key
    time.sleep(1.0)  # let the accounting writer flush the records to the data dir
    metrics = httpx.get(f"{gateway.url}/metrics", headers=admin_headers(), timeout=10)  # admin-only with auth on
    assert metrics.status_code == 200
    seen.append(metrics.text)
    seen.append(httpx.get(f"{gateway.url}/v1/gateway/usage?group_by=backend", headers=admin_headers(),
                          timeout=10).text)
    seen.append(gateway.log_path.read_text(errors="replace"))
    data_files = [p for p in (gateway.workdir / "data").rglob("*") if p.is_file()]
    assert any(p.name.startswith("accounting") for p in data_files)  # records were written there
    seen.extend(p.read_bytes().decode("latin-1") for p in data_files)
    everything = "\n".join(seen)
    assert "b401" in everything and "401" in everything  # the errors are really in what we searched
    assert SENTINEL not in everything
    assert SENTINEL[-10:] not in everything  # not even a masked tail
    assert "PROMPT-MARKER-42" not in everything


def test_request_body_size_limit(gateway: GatewayProcess) -> None:
    body = {"model": "a401", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=admin_headers(), timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_admin_key_never_logged(gateway: GatewayProcess) -> None:
    httpx.get(f"{gateway.url}/v1/models", headers={"authorization": "Bearer sk-slmgw-guess"}, timeout=10)
    log = Path(gateway.log_path).read_text(errors="replace")
    assert ADMIN_KEY not in log and "sk-slmgw-guess" not in log
