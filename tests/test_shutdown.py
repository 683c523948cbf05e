"""Graceful shutdown of a real gateway process: SIGTERM drains, then exits.

Readiness turns false first (503, ``draining: true``) while the listener stays open, an
in-flight stream keeps going and ends with ``[DONE]``, the process exits by itself, and the
stream's accounting record is in the SQLite store (the queue was flushed on the way out).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.accounting.sqlite_store import SQLiteRecordStore
from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess


@pytest.fixture()
def slow_upstream() -> Iterator[str]:
    # 24 tokens at 8/s: a stream of about 3 s.
    with serve_in_thread(FakeConfig(completion_tokens=24, tokens_per_s=8.0)) as (url, _):
        yield url


def test_sigterm_drains_in_flight_stream_then_exits(slow_upstream: str) -> None:
    policy = {
        "version": 1,
        "backends": {"llm": {"type": "openai", "base_url": f"{slow_upstream}/v1", "model": "fake-model"}},
        "models": {"llm": {"type": "static", "backend": "llm"}},
    }
    process = GatewayProcess(policy, name="drain", env={"SLM_GATEWAY_DRAIN_SECONDS": "20"}).start(timeout=60)
    lines: list[str] = []
    headers: dict[str, str] = {}
    first_chunk = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{process.url}/v1/chat/completions", timeout=30,
                          json={"model": "llm", "messages": [{"role": "user", "content": "hi"}],
                                "stream": True}) as response:
            headers.update(response.headers)
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    if '"content":"' in line and len(lines) > 1:
                        first_chunk.set()

    reader = threading.Thread(target=consume)
    try:
        reader.start()
        assert first_chunk.wait(10), lines
        process.signal(signal.SIGTERM)
        ready: dict[str, Any] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            response = httpx.get(f"{process.url}/ready", timeout=2)
            if response.status_code == 503:
                ready = response.json()
                break
            time.sleep(0.05)
        assert ready.get("draining") is True and ready.get("ready") is False
        assert reader.is_alive(), "the stream should still be going while the gateway drains"
        reader.join(20)
        assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
        assert process.process is not None
        process.process.wait(timeout=20)  # exits by itself once drained
        assert "drained; shutting down" in process.log()
    finally:
        process.stop(kill=True)
        reader.join(5)

    async def read_record() -> dict[str, Any] | None:
        store = SQLiteRecordStore(process.workdir / "data" / "accounting.sqlite3")
        await store.open()
        try:
            return await store.get_record(headers["x-slm-gateway-request-id"])
        finally:
            await store.close()

    saved = asyncio.run(read_record())
    assert saved is not None and saved["status"] == "ok" and saved["completion_tokens"] == 24
