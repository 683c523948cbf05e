"""The in-process engine: batching is exact, concurrent streams interleave, disconnects stop work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.local.config import LocalBackend
from gateway.backends.local.detokenize import StopMatcher
from gateway.core.backend import ChatMessage, SamplingParams, TokenChunk
from tests.gateway_process import smollm2_policy
from tests.inprocess import InProcessGateway

PROMPTS = ["Write a haiku about rain.", "List three colours.", "What is a prime number?", "Say hello."]


@pytest.fixture(scope="module")
def inprocess(model_cache: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    server = InProcessGateway(smollm2_policy(), tmp_path_factory.mktemp("inproc")).start()
    yield server
    server.stop()


async def _generate(backend: LocalModelBackend, prompt: str, max_tokens: int,
                    arrivals: list[tuple[float, int]] | None = None, tag: int = 0) -> str:
    text = ""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    async for event in backend.stream_chat([ChatMessage(role="user", content=prompt)], params):
        if isinstance(event, TokenChunk):
            text += event.text
            if arrivals is not None:
                arrivals.append((time.perf_counter(), tag))
    return text


async def test_batched_greedy_equals_one_at_a_time(model_cache: None) -> None:
    backend = LocalModelBackend("slm", LocalBackend(type="local"))
    await backend.start()
    try:
        alone = [await _generate(backend, p, 24) for p in PROMPTS]
        arrivals: list[tuple[float, int]] = []
        together = await asyncio.gather(*[_generate(backend, p, 24, arrivals, i) for i, p in enumerate(PROMPTS)])
        assert together == alone
        # Fair service: every stream got tokens before the first of them finished.
        first_finish = min(max(t for t, tag in arrivals if tag == i) for i in range(len(PROMPTS)))
        assert all(any(t < first_finish for t, tag in arrivals if tag == i) for i in range(len(PROMPTS)))
    finally:
        await backend.close()


async def test_closing_the_stream_stops_generation(model_cache: None) -> None:
    backend = LocalModelBackend("slm", LocalBackend(type="local"))
    await backend.start()
    try:
        stream = backend.stream_chat([ChatMessage(role="user", content="Count to one thousand.")],
                                     SamplingParams(max_tokens=500, temperature=0.0))
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        engine = backend._engine
        assert engine is not None
        deadline = time.monotonic() + 5
        while engine._batch.rows and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert engine._batch.rows == []
    finally:
        await backend.close()


def test_client_disconnect_cancels_generation_and_is_recorded(inprocess: InProcessGateway) -> None:
    body = {"model": "slm", "messages": [{"role": "user", "content": "Count slowly to one thousand."}],
            "max_tokens": 800, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{inprocess.url}/v1/chat/completions", json=body, timeout=60) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index >= 4:
                break
    records = inprocess.wait_records(1)
    assert records and records[-1].status == "client_disconnected"
    call = records[-1].calls[0]
    assert call.status == "cancelled"
    assert call.completion_tokens < 100
    engine = inprocess.state.runtime.backends["slm"]._engine
    deadline = time.monotonic() + 5
    while engine._batch.rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine._batch.rows == []


def test_non_stream_disconnect_cancels_generation(inprocess: InProcessGateway) -> None:
    before = len(inprocess.sink.records)
    body = {"model": "slm", "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 800, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{inprocess.url}/v1/chat/completions", json=body, timeout=1.5)
    records = inprocess.wait_records(before + 1)
    assert records[-1].status == "client_disconnected"
    assert records[-1].calls[0].completion_tokens < 200


@pytest.mark.parametrize(("chunks", "stops", "expected"), [
    (["Hello wor", "ld! Bye"], ("world",), ("Hello ", True)),
    (["ab", "c", "d"], ("cx",), ("abcd", False)),
    (["no stop here"], (), ("no stop here", False)),
    (["x", "ST", "OP", "tail"], ("STOP",), ("x", True)),
])
def test_stop_matcher(chunks: list[str], stops: tuple[str, ...], expected: tuple[str, bool]) -> None:
    matcher = StopMatcher(stops)
    out, hit = "", False
    for chunk in chunks:
        text, hit = matcher.feed(chunk)
        out += text
        if hit:
            break
    if not hit:
        out += matcher.flush()
    assert (out, hit) == expected


def test_loader_rejects_unknown_model(tmp_path: Path) -> None:
    from gateway.backends.local.loader import ModelLoadError, resolve_source

    with pytest.raises(ModelLoadError):
        resolve_source(str(tmp_path / "nothing-here"))
