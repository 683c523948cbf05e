"""Retries, fallbacks, circuit breakers and mid-stream failures through a real gateway process.

The upstreams are fake OpenAI servers in this process (loopback, instant): ``primary``
follows a script the test sets (fail, drop the connection mid-stream, hang, recover),
``backup`` always answers. The gateway under test is a real ``slm-gateway serve`` process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from openai import OpenAI

from loadtests.fake_upstream import FakeConfig, FakeUpstream, serve_in_thread
from tests.gateway_process import GatewayProcess

MSG = [{"role": "user", "content": "hi"}]


class ScriptedUpstream:
    """Wraps the fake upstream; ``mode`` decides what the next generation requests get."""

    def __init__(self) -> None:
        self.fake = FakeUpstream(FakeConfig(completion_tokens=8))
        self.mode = "ok"
        self.failures_left = 0  # for mode "flaky": fail this many, then answer
        self.generations = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.fake(scope, receive, send)
            return
        self.generations += 1
        mode = self.mode
        if mode == "flaky":
            mode = "fail503" if self.failures_left > 0 else "ok"
            self.failures_left -= 1
        if mode == "fail503":
            body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
        elif mode == "die":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake-model",
                     "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}]}
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True})
            await asyncio.sleep(0.05)
            raise RuntimeError("upstream process died mid-stream")  # uvicorn drops the connection
        else:
            await self.fake(scope, receive, send)


@pytest.fixture(scope="module")
def primary() -> Iterator[tuple[str, ScriptedUpstream]]:
    app = ScriptedUpstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def backup() -> Iterator[str]:
    with serve_in_thread(FakeConfig(completion_tokens=4, models=("backup-model",))) as (url, _):
        yield url


def reliability_policy(primary_url: str, backup_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "backends": {
            "primary": {"type": "openai", "base_url": f"{primary_url}/v1", "model": "fake-model",
                        "timeouts": {"connect": 1.0, "first_token": 3.0, "total": 10.0, "idle": 2.0},
                        "retry": {"max_attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.1},
                        "circuit_breaker": {"failure_threshold": 4, "window": 50, "cooldown_s": 2.0}},
            "backup": {"type": "openai", "base_url": f"{backup_url}/v1", "model": "backup-model"},
        },
        "models": {"main": {"type": "static", "backend": "primary"},
                   "nofallback": {"type": "static", "backend": "primary"},
                   "backup": {"type": "static", "backend": "backup"}},
        "fallbacks": {"main": ["backup"]},
    }


@pytest.fixture(scope="module")
def gateway(primary: tuple[str, ScriptedUpstream], backup: str) -> Iterator[GatewayProcess]:
    process = GatewayProcess(reliability_policy(primary[0], backup), name="reliability").start(timeout=60)
    yield process
    process.stop()


def record(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}")
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            data: dict[str, Any] = response.json()
            return data
        time.sleep(0.1)


def chat(gateway: GatewayProcess, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": model, "messages": MSG, **extra},
                      timeout=30)


def test_a_failed_attempt_is_retried_invisibly(gateway: GatewayProcess, primary: tuple[str, ScriptedUpstream]) -> None:
    upstream = primary[1]
    upstream.mode, upstream.failures_left, upstream.generations = "flaky", 1, 0
    response = chat(gateway, "nofallback")
    assert response.status_code == 200, response.text
    assert upstream.generations == 2
    assert "x-slm-gateway-fallback" not in response.headers
    upstream.mode = "ok"


def test_fallback_when_the_primary_is_down(gateway: GatewayProcess, primary: tuple[str, ScriptedUpstream]) -> None:
    upstream = primary[1]
    upstream.mode = "fail503"
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="main", messages=MSG)  # type: ignore[arg-type]
    assert raw.headers["x-slm-gateway-fallback"] == "backup"
    assert raw.parse().model == "backup-model"
    saved = record(gateway, raw.headers["x-slm-gateway-request-id"])
    assert saved["fallback"] == "backup" and saved["status"] == "ok" and saved["public_model"] == "main"
    assert [(c["backend"], c["used"]) for c in saved["calls"]] == [("primary", False), ("backup", True)]
    assert saved["calls"][0]["status"] == "upstream_unavailable"
    # Streamed too: the fallback happens before the first byte, so the stream is clean.
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=30,
                      json={"model": "main", "messages": MSG, "stream": True}) as stream:
        assert stream.status_code == 200 and stream.headers["x-slm-gateway-fallback"] == "backup"
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    upstream.mode = "ok"


def test_circuit_opens_fails_fast_and_recovers(gateway: GatewayProcess, primary: tuple[str, ScriptedUpstream]) -> None:
    upstream = primary[1]
    time.sleep(2.1)  # let an earlier test's failures age out of a possibly open circuit
    assert chat(gateway, "nofallback").status_code == 200  # closed again
    upstream.mode = "fail503"
    for _ in range(2):  # 2 requests x 2 attempts = 4 consecutive failures: open
        assert chat(gateway, "nofallback").status_code == 503
    ready = httpx.get(f"{gateway.url}/ready").json()
    assert ready["circuits"]["primary"] == "open" and ready["circuits"]["backup"] == "closed"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'slm_gateway_circuit_state{backend="primary"} 2.0' in metrics
    seen = upstream.generations
    started = time.perf_counter()
    fast = chat(gateway, "nofallback")
    assert fast.status_code == 503 and fast.json()["error"]["code"] == "circuit_open"
    assert "retry-after" in fast.headers and time.perf_counter() - started < 0.5
    assert chat(gateway, "main").headers["x-slm-gateway-fallback"] == "backup"
    assert upstream.generations == seen  # the open circuit spared the upstream
    upstream.mode = "ok"
    time.sleep(2.1)  # cool-down: the next call is the half-open probe, it succeeds, the circuit closes
    assert chat(gateway, "nofallback").status_code == 200
    assert httpx.get(f"{gateway.url}/ready").json()["circuits"]["primary"] == "closed"


def test_mid_stream_failure_gives_an_error_event_and_done(
    gateway: GatewayProcess, primary: tuple[str, ScriptedUpstream]
) -> None:
    upstream = primary[1]
    upstream.mode = "die"
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=30,
                      json={"model": "main", "messages": MSG, "stream": True}) as stream:
        assert stream.status_code == 200
        assert "x-slm-gateway-fallback" not in stream.headers  # the first token had been sent
        request_id = stream.headers["x-slm-gateway-request-id"]
        lines = [line for line in stream.iter_lines() if line]
    upstream.mode = "ok"
    assert any("partial" in line for line in lines)
    error = orjson.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "upstream_error" and "Traceback" not in error["message"]
    assert lines[-1] == "data: [DONE]"
    saved = record(gateway, request_id)
    assert saved["status"] == error["code"] and saved["http_status"] == 502
    assert saved["calls"][0]["status"] == error["code"]
