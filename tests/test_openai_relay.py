"""How the ``openai`` backend relays an upstream's stream, over real HTTP: a slow upstream is
streamed token by token, a fast one may be coalesced per network read, and the text and usage
are the same either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.inprocess import InProcessGateway

FULL_TEXT = " The quick brown fox jumps over"  # the fake's first 6 tokens


def relay(tmp_path: Path, config: FakeConfig) -> Iterator[OpenAI]:
    with serve_in_thread(config) as (fake_url, _fake):
        policy = {"version": 1,
                  "backends": {"up": {"type": "openai", "base_url": f"{fake_url}/v1", "model": "fake-model"}},
                  "models": {"up": {"type": "static", "backend": "up"}}}
        gateway = InProcessGateway(policy, tmp_path).start()
        try:
            yield OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-none", max_retries=0, timeout=30)
        finally:
            gateway.stop()


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[OpenAI]:
    yield from relay(tmp_path, FakeConfig(tokens_per_s=10, completion_tokens=6))


@pytest.fixture
def instant(tmp_path: Path) -> Iterator[OpenAI]:
    yield from relay(tmp_path, FakeConfig(tokens_per_s=0, completion_tokens=6))


def content_chunks(client: OpenAI) -> list[str]:
    stream = client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}], stream=True)
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def test_a_slow_upstream_streams_token_by_token(slow: OpenAI) -> None:
    pieces = content_chunks(slow)
    assert "".join(pieces) == FULL_TEXT
    assert len(pieces) == 6  # 100 ms apart: each token is its own read, relayed at once


def test_a_fast_upstream_gives_the_same_text_and_usage(instant: OpenAI) -> None:
    pieces = content_chunks(instant)
    assert "".join(pieces) == FULL_TEXT
    assert 1 <= len(pieces) <= 6
    reply = instant.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == FULL_TEXT
    assert reply.usage is not None and reply.usage.completion_tokens == 6
