"""The rest of OpenAI's surface on the real local models, through the openai SDK: n > 1,
lists of prompts, sampling defaults from the policy, int64 seeds, /v1/models/{id},
/v1/embeddings on all-MiniLM-L6-v2 and /v1/responses (with the store behind
previous_response_id)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.inprocess import InProcessGateway

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenAI, InProcessGateway]]:
    policy = {
        "version": 1,
        "backends": {
            "slm": {"type": "local", "model": "smollm2", "threads": 1, "defaults": {"temperature": 0.2, "top_p": 0.9}},
            "raw": {"type": "local", "model": "smollm2", "threads": 1},
            "embed": {"type": "embedding", "threads": 1},
        },
        "models": {"slm": {"type": "static", "backend": "slm"}, "raw": {"type": "static", "backend": "raw"},
                   "slm-embed": {"type": "static", "backend": "embed"}},
    }
    gateway = InProcessGateway(policy, tmp_path_factory.mktemp("local")).start()
    try:
        yield OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-none", max_retries=0, timeout=120), gateway
    finally:
        gateway.stop()


def test_omitted_sampling_uses_the_policy_defaults(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    implicit = client.chat.completions.create(model="slm", messages=CAPITAL, max_tokens=12, seed=3)
    explicit = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=12, seed=3,
                                              temperature=0.2, top_p=0.9)
    assert implicit.choices[0].message.content == explicit.choices[0].message.content


def test_n_choices_are_separate_samples_with_summed_usage(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, gateway = local
    single = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=8, temperature=0)
    reply = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=8, temperature=1.0, n=3,
                                           seed=11)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert single.usage is not None and reply.usage is not None
    assert reply.usage.prompt_tokens == 3 * single.usage.prompt_tokens
    assert 3 <= reply.usage.completion_tokens <= 3 * 8
    assert len({c.message.content for c in reply.choices}) > 1  # seeds seed+i: different samples
    again = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=8, temperature=1.0, n=3, seed=11)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    record = gateway.wait_records(3)[-1]
    assert len(record.calls) == 3 and record.completion_tokens == again.usage.completion_tokens  # type: ignore[union-attr]


def test_negative_int64_seed_and_top_p_zero(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    a = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=6, seed=-(2**63), temperature=1)
    b = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=6, seed=-(2**63), temperature=1)
    assert a.choices[0].message.content == b.choices[0].message.content
    greedy = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=6, temperature=0)
    nucleus0 = client.chat.completions.create(model="raw", messages=CAPITAL, max_tokens=6, top_p=0, temperature=1)
    assert greedy.choices[0].message.content == nucleus0.choices[0].message.content


def test_completions_list_of_prompts_and_default_16_tokens(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    reply = client.completions.create(model="raw", prompt=["The sky is", "Two plus two is"], temperature=0,
                                      max_tokens=None)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage is not None and reply.usage.completion_tokens <= 32
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)


def test_local_model_refuses_parameters_it_would_ignore(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="raw", messages=CAPITAL, logit_bias={"1": 5})
    assert info.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as suffix:
        client.completions.create(model="raw", prompt="a", suffix="b")
    assert suffix.value.param == "suffix"


def test_retrieve_model(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    assert client.models.retrieve("slm-embed").owned_by == "slm-gateway:static"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_embeddings_from_minilm(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    result = client.embeddings.create(model="slm-embed", input=["A cat sits on the mat.", "A kitten rests on a rug.",
                                                                 "Quarterly tax filing deadlines."])
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2
    assert result.usage.prompt_tokens > 10 and result.model == "all-MiniLM-L6-v2"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="slm-embed", input="x", dimensions=64)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="slm-embed", messages=CAPITAL)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="raw", input="x")


def test_responses_text_instructions_and_previous_response(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    first = client.responses.create(model="raw", input="What is the capital of France?",
                                    instructions="Answer in one short sentence.", max_output_tokens=16, temperature=0)
    assert first.status in ("completed", "incomplete") and first.output_text
    assert first.usage is not None and first.usage.output_tokens <= 16
    follow = client.responses.create(model="raw", previous_response_id=first.id, max_output_tokens=16,
                                     input=[{"role": "user", "content": "And of Italy?"}], temperature=0)
    assert follow.previous_response_id == first.id
    assert follow.usage is not None and follow.usage.input_tokens > first.usage.input_tokens  # history included
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="raw", input="x", previous_response_id="resp_missing")


def test_responses_stream_events(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    kinds: list[str] = []
    text: list[str] = []
    finals = []
    with client.responses.stream(model="raw", input="Say hi.", max_output_tokens=16, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                finals.append(event.response)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")  # incomplete: max_output_tokens hit
    assert len(finals) == 1 and finals[0].output_text == "".join(text)


def test_unsupported_responses_features_are_400(local: tuple[OpenAI, InProcessGateway]) -> None:
    client, _ = local
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="raw", input="x", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="raw", input="x", background=True)
