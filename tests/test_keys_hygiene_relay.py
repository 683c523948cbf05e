"""Issue 18, defect 4: a relayed upstream error must not hand the client anything it may not see.

The upstream here answers every generation with a 400 (or 422) whose message quotes what it
received — the ``Authorization`` header with the gateway's upstream key, the rewritten request
body and the internal model name — as some proxies do. The client (chat and completions,
streamed or not, with a virtual key) must get an OpenAI envelope with none of that, and the
gateway's log must hold no secret either (upstream key, admin key, the virtual key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_process import GatewayProcess
from tests.test_keys_support import (
    ADMIN_KEY,
    REDIS_URL,
    QuotingUpstream,
    create_key,
    delete_redis_key,
    redis_listening,
    serve_asgi,
)

pytestmark = pytest.mark.skipif(not redis_listening(), reason="no Redis on 127.0.0.1:6379 (.ci/run starts one)")

UPSTREAM_KEY = "sk-upstream-ECHOED-4b1d9e27c3"
INTERNAL_MODEL = "internal-model-Zq81"


class EchoingUpstream(QuotingUpstream):
    """Rejects every generation, quoting the request's Authorization header and body."""

    def reply(self, authorization: str, body: bytes) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        status = 422 if b'"prompt"' in body else 400
        payload = {"error": {"message": f"bad request from {authorization}; you sent {body.decode()}",
                             "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}}
        return status, payload, []


@pytest.fixture(scope="module")
def echoing() -> Iterator[tuple[str, EchoingUpstream]]:
    app = EchoingUpstream()
    with serve_asgi(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def gateway(echoing: tuple[str, EchoingUpstream]) -> Iterator[GatewayProcess]:
    backend = {"type": "openai", "base_url": f"{echoing[0]}/v1", "model": INTERNAL_MODEL,
               "api_key_env": "ECHO_UPSTREAM_KEY", "price": {"input_per_1m": 1.0, "output_per_1m": 1.0}}
    policy = {"version": 1, "backends": {"llm": backend}, "models": {"public": {"type": "static", "backend": "llm"}}}
    process = GatewayProcess(policy, name="relay", env={"ECHO_UPSTREAM_KEY": UPSTREAM_KEY, "REDIS_URL": REDIS_URL,
                                                        "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY})
    try:
        yield process.start(timeout=60)
    finally:
        process.stop()


def test_an_echoing_upstream_error_is_relayed_without_secrets_or_internals(
    gateway: GatewayProcess, echoing: tuple[str, EchoingUpstream]
) -> None:
    created = create_key(gateway.url, budget_usd=1.0)
    secret = str(created["key"])
    headers = {"authorization": f"Bearer {secret}"}
    seen: list[str] = []
    params: list[str | None] = []
    try:
        for stream in (False, True):
            chat = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=headers, timeout=30)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "upstream_bad_request"
            params.append(error["param"])
            assert response.headers["x-slm-gateway-request-id"]  # produced after routing
            seen.append(response.text + str(response.headers))
            completion = {"model": "public", "prompt": "hi", "stream": stream}
            response = httpx.post(f"{gateway.url}/v1/completions", json=completion, headers=headers, timeout=30)
            assert response.status_code == 400 and "HTTP 422" in response.json()["error"]["message"], response.text
            seen.append(response.text + str(response.headers))
    finally:
        delete_redis_key(str(created["id"]))
    assert f"Bearer {UPSTREAM_KEY}" in echoing[1].authorizations  # the upstream really got (and echoed) it
    relayed = "\n".join(seen)
    for leak in (UPSTREAM_KEY, UPSTREAM_KEY[-10:], INTERNAL_MODEL, "stream_options", "you sent", secret):
        assert leak not in relayed, (leak, relayed[:600])
    assert params == ["messages", "messages"]  # an identifier-like param is useful and harmless
    log = gateway.log()
    for leak in (UPSTREAM_KEY, ADMIN_KEY, secret):
        assert leak not in log, leak
