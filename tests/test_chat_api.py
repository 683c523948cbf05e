"""Chat completions through a real gateway process, with the real SmolLM2 and the openai SDK."""

from __future__ import annotations

import math

import httpx
import orjson
from openai import OpenAI

from tests.gateway_process import GatewayProcess

HI = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_chat_non_stream_answers_from_smollm2(client: OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(model="slm", messages=HI, max_tokens=16, temperature=0)
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.model == "SmolLM2-135M-Instruct"
    assert answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage is not None and answer.usage.prompt_tokens > 5
    assert 0 < answer.usage.completion_tokens <= 16
    assert raw.headers["x-slm-gateway-route"] == "slm"
    assert raw.headers["x-slm-gateway-request-id"].startswith("req-")


def test_greedy_is_deterministic_and_max_tokens_is_honoured(client: OpenAI) -> None:
    first = client.chat.completions.create(model="slm", messages=HI, max_tokens=8, temperature=0)
    second = client.chat.completions.create(model="slm", messages=HI, max_completion_tokens=8, temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage is not None and first.usage.completion_tokens <= 8


def test_seeded_sampling_repeats(client: OpenAI) -> None:
    kwargs = {"model": "slm", "messages": HI, "max_tokens": 12, "temperature": 1.0, "seed": 1234}
    a = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    b = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content


def test_content_as_text_parts_and_system_message(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="slm", max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}],
    )
    assert answer.choices[0].message.content


def test_stream_has_openai_shape_and_ends_with_done(gateway: GatewayProcess) -> None:
    body = {"model": "slm", "messages": HI, "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    non_stream = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": False}, timeout=120).json()
    assert text == non_stream["choices"][0]["message"]["content"]


def test_stream_with_sdk(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="slm", messages=HI, max_tokens=10, temperature=0, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces)


def test_logprobs_and_top_logprobs(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="slm", messages=HI, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and answer.usage is not None
    assert len(content) == answer.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        tops = [t.logprob for t in item.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(item.logprob, tops[0], abs_tol=1e-5)
    assert "".join(item.token for item in content) == answer.choices[0].message.content


def test_stop_sequence_cuts_the_answer(client: OpenAI) -> None:
    full = client.chat.completions.create(model="slm", messages=HI, max_tokens=20, temperature=0)
    text = full.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    cut = client.chat.completions.create(model="slm", messages=HI, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_llm_via_http_upstream(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="llm", messages=HI, max_tokens=8, temperature=0)
    answer = raw.parse()
    assert answer.model == "upstream-smollm2"
    assert raw.headers["x-slm-gateway-route"] == "llm"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    local = client.chat.completions.create(model="slm", messages=HI, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content == local.choices[0].message.content


def test_llm_stream_passes_through(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="llm", messages=HI, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_unknown_fields_are_accepted(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="slm", messages=HI, max_tokens=4, temperature=0,
                                            extra_body={"frequency_penalty_custom": 1, "metadata_x": "y"})
    assert answer.choices[0].message.content is not None


def test_models_health_ready(gateway: GatewayProcess) -> None:
    models = httpx.get(f"{gateway.url}/v1/models").json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"slm", "llm"}
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/ready").json()
    assert ready["ready"] is True and ready["backends"] == {"slm": True, "llm": True}
