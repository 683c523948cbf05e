"""The fake upstream speaks OpenAI's protocol: checked with the real ``openai`` client over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from loadtests.fake_upstream import FakeConfig, FakeUpstream, serve_in_thread

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something short"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeUpstream]]:
    with serve_in_thread(FakeConfig(completion_tokens=6, record=True)) as served:
        yield served


@pytest.fixture(scope="module")
def client(fake: tuple[str, FakeUpstream]) -> OpenAI:
    return OpenAI(base_url=f"{fake[0]}/v1", api_key="sk-fake", max_retries=0, timeout=10)


def test_chat_non_stream(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == " The quick brown fox jumps over"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


def test_chat_stream_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, max_tokens=4,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " The quick brown fox"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_ends_with_done(fake: tuple[str, FakeUpstream]) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    response = httpx.post(f"{fake[0]}/v1/chat/completions", json=body, timeout=10)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in response.text  # only with stream_options.include_usage


def test_completions_stream_and_non_stream(client: OpenAI) -> None:
    reply = client.completions.create(model="fake-model", prompt="Once upon", max_tokens=3, logprobs=2)
    assert reply.choices[0].text == " The quick brown"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].logprobs is not None
    assert reply.choices[0].logprobs.tokens == [" The", " quick", " brown"]
    assert reply.usage is not None and reply.usage.prompt_tokens == 2
    chunks = list(client.completions.create(model="fake-model", prompt="Once upon", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " The quick brown fox jumps over"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_chat_logprobs(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-model", messages=MESSAGES,
                                           logprobs=True, top_logprobs=3, max_tokens=2)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == [" The", " quick"]
    assert all(len(t.top_logprobs) == 3 and t.logprob < 0 for t in logprobs.content)


def test_models(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fake-model"]


def test_records_requests(fake: tuple[str, FakeUpstream], client: OpenAI) -> None:
    httpx.delete(f"{fake[0]}/_recorded")
    client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "secret-42"}])
    recorded = httpx.get(f"{fake[0]}/_recorded").json()
    assert len(recorded) == 1
    assert recorded[0]["path"] == "/v1/chat/completions"
    assert recorded[0]["body"]["messages"][0]["content"] == "secret-42"
    assert recorded[0]["headers"]["authorization"] == "Bearer sk-fake"


def test_error_rate_one_gives_5xx() -> None:
    with serve_in_thread(FakeConfig(error_rate=1.0, error_status=503)) as (url, _app):
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=10)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert caught.value.status_code == 503


def test_error_rate_is_a_fraction() -> None:
    with serve_in_thread(FakeConfig(error_rate=0.5, seed=7)) as (url, _app):
        statuses = [httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=10).status_code
                    for _ in range(200)]
    failures = statuses.count(500)
    assert statuses.count(200) + failures == 200
    assert 60 < failures < 140


def test_ttft_and_pacing() -> None:
    with serve_in_thread(FakeConfig(ttft_ms=150, tokens_per_s=50, completion_tokens=6)) as (url, _app):
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=10)
        start = time.perf_counter()
        arrivals = []
        for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 6
    assert arrivals[0] >= 0.14
    # 5 gaps of 20 ms after the first token
    assert arrivals[-1] - arrivals[0] >= 0.09
