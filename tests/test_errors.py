"""Every error reaches the client in OpenAI's envelope with the right status."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.gateway_process import GatewayProcess, smollm2_policy, two_tier_policy

MSG = [{"role": "user", "content": "hi"}]


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


def test_invalid_json(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    error = assert_envelope(response, 400)
    assert "JSON" in str(error["message"])


def test_validation_error_is_readable(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions",
                          json={"model": "slm", "messages": [{"role": "wizard", "content": "x"}], "temperature": 9})
    error = assert_envelope(response, 400)
    assert "messages.0.role" in str(error["message"]) and "temperature" in str(error["message"])


def test_unknown_model(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=MSG)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


def test_n_out_of_range(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="slm", messages=MSG, n=129)  # type: ignore[arg-type]
    assert info.value.param == "n"


def test_body_over_limit(gateway: GatewayProcess) -> None:
    body = b'{"model": "slm", "messages": [{"role": "user", "content": "' + b"a" * 1_100_000 + b'"}]}'
    assert_envelope(httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                               headers={"content-type": "application/json"}), 413, "request_too_large")


def test_context_length_exceeded(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions",
                          json={"model": "slm", "messages": MSG, "max_tokens": 100_000})
    assert_envelope(response, 400, "context_length_exceeded")


def test_unknown_endpoint_and_method(gateway: GatewayProcess) -> None:
    assert_envelope(httpx.get(f"{gateway.url}/v1/nothing-here"), 404)
    assert_envelope(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


def test_unconfigured_llm_gives_503(model_cache: None) -> None:
    policy = smollm2_policy(llm={"type": "static", "backend": "llm"})
    policy["backends"]["llm"] = {"type": "openai", "base_url_env": "SLMGW_TEST_UNSET_URL",
                                 "model_env": "SLMGW_TEST_UNSET_MODEL"}
    process = GatewayProcess(policy, name="unconfigured").start()
    try:
        response = httpx.post(f"{process.url}/v1/chat/completions", json={"model": "llm", "messages": MSG})
        error = assert_envelope(response, 503, "upstream_unavailable")
        assert "SLMGW_TEST_UNSET_URL" in str(error["message"])
        assert "is not configured" in process.log()
    finally:
        process.stop()


@pytest.fixture()
def hanging_upstream() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: an upstream that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_upstream_down_then_slow(model_cache: None, hanging_upstream: str) -> None:
    upstream = GatewayProcess(smollm2_policy(), name="doomed-upstream").start()
    policy = two_tier_policy(upstream.url)
    policy["backends"]["slow"] = {"type": "openai", "base_url": f"{hanging_upstream}/v1", "model": "m",
                                  "timeouts": {"connect": 1.0, "first_token": 1.0, "total": 2.0, "idle": 1.0}}
    policy["models"]["slow"] = {"type": "static", "backend": "slow"}
    process = GatewayProcess(policy, name="faulty").start()
    try:
        ok = httpx.post(f"{process.url}/v1/chat/completions", json={"model": "llm", "messages": MSG, "max_tokens": 2},
                        timeout=60)
        assert ok.status_code == 200
        upstream.stop(kill=True)
        down = httpx.post(f"{process.url}/v1/chat/completions", json={"model": "llm", "messages": MSG}, timeout=60)
        assert_envelope(down, 503, "upstream_unreachable")
        streamed = httpx.post(f"{process.url}/v1/chat/completions",
                              json={"model": "llm", "messages": MSG, "stream": True}, timeout=60)
        assert_envelope(streamed, 503)
        slow = httpx.post(f"{process.url}/v1/chat/completions", json={"model": "slow", "messages": MSG}, timeout=60)
        assert_envelope(slow, 504, "upstream_timeout")
    finally:
        process.stop()
        upstream.stop()
