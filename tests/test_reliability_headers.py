"""Issue 18, defect 3: one huge or slow request head must not stall anyone else.

A real gateway process; while one client sends a 64 MiB header (to ``/v1/models``, and a
32 MiB one to ``/health`` with no key) and another trickles its headers slowloris-style, a
third client keeps calling ``/health``. The huge heads get 431 (or the connection closed on
them), the slow one 408 once its time is up, and the third client's requests all succeed
meanwhile — no timed asserts; latency is compared in ``loadtests/bench_headers.py``.
Also: the request line is limited (414) and ordinary requests with large-but-legal headers pass.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_process import GatewayProcess

HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    policy = {"version": 1,
              "backends": {"llm": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
              "models": {"llm": {"type": "static", "backend": "llm"}}}
    process = GatewayProcess(policy, name="headers", env={"SLM_GATEWAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)})
    try:
        yield process.start(timeout=60)
    finally:
        process.stop()


def _send_huge_header(port: int, path: str, size: int, outcome: dict[str, str]) -> None:
    """Send a request whose one header is ``size`` bytes; note the status line we got back, if any."""
    chunk = b"a" * (1 << 20)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nx-huge: ".encode())
            sent = 0
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
            outcome["reply"] = sock.recv(200).decode("latin-1")
    except OSError as exc:  # the gateway closed on us mid-send: also a refusal
        outcome["reply"] = f"closed: {type(exc).__name__}"


def _slowloris(port: int, outcome: dict[str, str]) -> None:
    """Trickle header lines, one every 0.3 s, never finishing the head."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            deadline = time.monotonic() + 6 * HEADER_TIMEOUT_S
            while time.monotonic() < deadline:
                sock.sendall(b"x-slow: 1\r\n")
                time.sleep(0.3)
                sock.setblocking(False)
                try:
                    data = sock.recv(200)
                except BlockingIOError:
                    data = b""
                finally:
                    sock.setblocking(True)
                if data:
                    outcome["reply"] = data.decode("latin-1")
                    return
            outcome["reply"] = "never refused"
    except OSError as exc:
        outcome["reply"] = f"closed: {type(exc).__name__}"


def test_huge_and_slow_heads_are_refused_while_others_are_served(gateway: GatewayProcess) -> None:
    huge_models: dict[str, str] = {}
    huge_health: dict[str, str] = {}
    slow: dict[str, str] = {}
    attackers = [threading.Thread(target=_send_huge_header, args=(gateway.port, "/v1/models", 64 << 20, huge_models)),
                 threading.Thread(target=_send_huge_header, args=(gateway.port, "/health", 32 << 20, huge_health)),
                 threading.Thread(target=_slowloris, args=(gateway.port, slow))]
    for thread in attackers:
        thread.start()
    statuses: list[int] = []
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        while any(thread.is_alive() for thread in attackers) and len(statuses) < 10_000:
            statuses.append(client.get("/health").status_code)
    for thread in attackers:
        thread.join(timeout=60)
    assert len(statuses) >= 20 and set(statuses) == {200}, statuses[:20]  # served throughout
    for outcome in (huge_models, huge_health):
        assert outcome["reply"].startswith(("HTTP/1.1 431", "closed")), outcome
    assert slow["reply"].startswith(("HTTP/1.1 408", "closed")), slow
    assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200


def test_request_line_and_header_limits(gateway: GatewayProcess) -> None:
    long_path = httpx.get(f"{gateway.url}/health?x={'a' * 20_000}", timeout=10)
    assert long_path.status_code == 414 and long_path.json()["error"]["code"] == "request_line_too_long"
    too_many = httpx.get(f"{gateway.url}/health", headers={f"x-h{i}": "v" * 1000 for i in range(100)}, timeout=10)
    assert too_many.status_code == 431 and too_many.json()["error"]["type"] == "invalid_request_error"
    legal = httpx.get(f"{gateway.url}/health", headers={f"x-h{i}": "v" * 1000 for i in range(30)}, timeout=10)
    assert legal.status_code == 200
    # A body larger than the header limit, sent with its head in one go, is not mistaken for headers.
    body = {"model": "llm", "messages": [{"role": "user", "content": "x" * 200_000}]}
    posted = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert posted.status_code == 503, posted.text  # reached the app: the backend is unreachable
    # Keep-alive: several requests on one connection each get a fresh limit.
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(5):
            assert client.get("/health", headers={"x-pad": "v" * 50_000}).status_code == 200
