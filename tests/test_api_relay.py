"""Faithful relay to an HTTP upstream, through the real openai SDK and a recording upstream
(``loadtests/fake_upstream.py``): every field the client sends arrives unchanged (the model
name excepted), every field the upstream answers with comes back — tool calls whole and as
streamed fragments, refusals, system_fingerprint, service_tier, usage details."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI

from loadtests.fake_agent_payloads import FINGERPRINT, REFUSAL, SERVICE_TIER
from loadtests.fake_upstream import FakeConfig, FakeUpstream, serve_in_thread
from tests.inprocess import InProcessGateway

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}


class Relay:
    def __init__(self, gateway: InProcessGateway, fake: FakeUpstream) -> None:
        self.gateway = gateway
        self.fake = fake
        self.client = OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-none", max_retries=0, timeout=30)

    def sent(self) -> dict[str, Any]:
        """The body the upstream received for the last call."""
        body: dict[str, Any] = self.fake.recorded[-1]["body"]
        return body


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    with serve_in_thread(FakeConfig(record=True, completion_tokens=4)) as (url, fake):
        policy = {"version": 1,
                  "backends": {"up": {"type": "openai", "base_url": f"{url}/v1", "model": "fake-model"},
                               "tuned": {"type": "openai", "base_url": f"{url}/v1", "model": "fake-model",
                                         "defaults": {"temperature": 0.2, "top_p": 0.9}}},
                  "models": {"up": {"type": "static", "backend": "up"},
                             "tuned": {"type": "static", "backend": "tuned"},
                             "up-embed": {"type": "static", "backend": "up"}}}
        gateway = InProcessGateway(policy, tmp_path).start()
        try:
            yield Relay(gateway, fake)
        finally:
            gateway.stop()


def test_every_client_field_reaches_the_upstream_unchanged(relay: Relay) -> None:
    messages: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
        "type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"], "additionalProperties": False}}}
    relay.client.chat.completions.create(
        model="up", messages=messages, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=True,
        response_format=fmt,  # type: ignore[arg-type]
        logit_bias={"42": -100}, frequency_penalty=0.5, presence_penalty=-0.5, user="u-1", seed=-7,
        max_completion_tokens=33, temperature=0.3, top_p=0.8, stop=["\n\n"], metadata={"k": "v"}, store=False,
        extra_body={"top_k": 5, "custom_field": {"nested": [1, 2]}},
    )
    sent = relay.sent()
    assert sent["model"] == "fake-model"  # the one deliberate rewrite
    assert sent["messages"] == messages
    assert sent["tools"] == [WEATHER, TIME]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is True
    assert sent["response_format"] == fmt
    assert sent["logit_bias"] == {"42": -100}
    assert (sent["frequency_penalty"], sent["presence_penalty"], sent["user"]) == (0.5, -0.5, "u-1")
    assert (sent["seed"], sent["temperature"], sent["top_p"], sent["stop"]) == (-7, 0.3, 0.8, ["\n\n"])
    assert sent["max_completion_tokens"] == 33 and "max_tokens" not in sent
    assert sent["metadata"] == {"k": "v"} and sent["store"] is False
    assert sent["top_k"] == 5 and sent["custom_field"] == {"nested": [1, 2]}


def test_tool_calls_come_back_whole(relay: Relay) -> None:
    reply = relay.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                                 tools=[WEATHER, TIME])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.refusal is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("call_fake0", "get_weather", {"city": "fake", "days": 1}), ("call_fake1", "get_time", {"zone": "fake"})]
    assert reply.system_fingerprint == FINGERPRINT and reply.service_tier == SERVICE_TIER
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.prompt_tokens_details is not None and reply.usage.prompt_tokens_details.cached_tokens == 0


def test_tool_calls_stream_as_fragments_the_sdk_assembles(relay: Relay) -> None:
    with relay.client.chat.completions.stream(model="up", messages=[{"role": "user", "content": "hi"}],
                                              tools=[WEATHER], parallel_tool_calls=False) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert relay.sent()["parallel_tool_calls"] is False
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [  # type: ignore[union-attr]
        ("get_weather", '{"city":"fake","days":1}')]


def test_refusal_and_its_logprobs_are_relayed(relay: Relay) -> None:
    reply = relay.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "REFUSE"}],
                                                 logprobs=True)
    assert reply.choices[0].message.refusal == REFUSAL and reply.choices[0].message.content is None
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.refusal is not None
    chunks = list(relay.client.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "REFUSE"}], stream=True))
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices) == REFUSAL


def test_omitted_sampling_is_left_to_the_upstream_or_the_policy_defaults(relay: Relay) -> None:
    relay.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    sent = relay.sent()
    assert "temperature" not in sent and "top_p" not in sent
    relay.client.chat.completions.create(model="tuned", messages=[{"role": "user", "content": "hi"}])
    assert (relay.sent()["temperature"], relay.sent()["top_p"]) == (0.2, 0.9)
    relay.client.chat.completions.create(model="tuned", messages=[{"role": "user", "content": "hi"}], temperature=1)
    assert (relay.sent()["temperature"], relay.sent()["top_p"]) == (1, 0.9)


def test_nullables_are_accepted_as_the_spec_marks_them(relay: Relay) -> None:
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": None, "logprobs": None,
            "temperature": None, "top_p": 0, "n": None, "seed": None, "stop": None, "max_tokens": None,
            "top_logprobs": None, "tools": None, "response_format": None}
    reply = httpx.post(f"{relay.gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["refusal"] is None
    completion = httpx.post(f"{relay.gateway.url}/v1/completions", timeout=30, json={
        "model": "up", "prompt": None, "max_tokens": None, "echo": None, "logprobs": None, "n": None})
    assert completion.status_code == 200, completion.text
    assert relay.sent()["max_tokens"] == 16  # OpenAI's documented default, null included
    assert relay.sent()["prompt"] == "<|endoftext|>"


@pytest.mark.parametrize("field, value", [
    ("seed", -(2**63) - 1), ("seed", 2**63), ("logit_bias", {"5": 101}), ("logit_bias", {"x": 1}),
    ("top_logprobs", 21), ("stop", ["a", "b", "c", "d", "e"]), ("stop", "x" * 2000), ("temperature", 2.5),
    ("n", 0), ("tools", [{"type": "function"}]), ("response_format", {"type": "json_schema"}),
])
def test_bad_parameters_are_400_and_never_reach_the_upstream(relay: Relay, field: str, value: Any) -> None:
    before = len(relay.fake.recorded)
    reply = httpx.post(f"{relay.gateway.url}/v1/chat/completions", timeout=30,
                       json={"model": "up", "messages": [{"role": "user", "content": "hi"}], field: value})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert len(relay.fake.recorded) == before
    circuits = httpx.get(f"{relay.gateway.url}/ready", timeout=10).json()["circuits"]
    assert circuits["up"] == "closed"


def test_n_choices_and_a_list_of_prompts(relay: Relay) -> None:
    reply = relay.client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}], n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None and reply.usage.completion_tokens == 12  # 3 answers of 4 tokens, summed
    completion = relay.client.completions.create(model="up", prompt=["one", "two"], n=2, max_tokens=2)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    prompts = [r["body"]["prompt"] for r in relay.fake.recorded[-4:]]
    assert sorted(prompts) == ["one", "one", "two", "two"]
    streamed = list(relay.client.completions.create(model="up", prompt=["a", "b"], max_tokens=2, stream=True))
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}


def test_models_retrieve_and_embeddings_relay(relay: Relay) -> None:
    assert relay.client.models.retrieve("up").id == "up"
    with pytest.raises(Exception) as missing:
        relay.client.models.retrieve("nope")
    assert getattr(missing.value, "status_code", None) == 404
    result = relay.client.embeddings.create(model="up-embed", input=["a", "b"], dimensions=4)
    assert [len(d.embedding) for d in result.data] == [4, 4]
    assert relay.sent()["input"] == ["a", "b"] and relay.sent()["dimensions"] == 4
    encoded = relay.client.embeddings.create(model="up-embed", input="a", dimensions=4, encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(str(encoded.data[0].embedding)), dtype="<f4")
    assert decoded.tolist() == pytest.approx(result.data[0].embedding, abs=1e-6)
