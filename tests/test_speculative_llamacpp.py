"""Speculative decoding through the real llama.cpp TokenScorer (SmolLM2-135M, one thread):
greedy output token-identical to the target alone (the backend's own generation), with
prompt-lookup drafts and with a model drafter, and verification rounds that reuse the
engine's prefix cache instead of re-reading the context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.backends.local.backend import LocalModelBackend
from gateway.core.backend import ChatMessage, CompletionPrompt, SamplingParams, TokenChunk
from gateway.core.record import RequestRecord
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from loadtests.speculative_models import agreement
from routers.speculative.config import SpeculativeStrategy
from routers.speculative.strategy import Speculative
from tests.local_engine_support import collect, started

CODE = ('from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n'
        '    """ Given a list of deposit and withdrawal operations on a bank account that starts with\n'
        '    zero balance, detect if at any point the balance falls below zero.\n'
        '    >>> below_zero([1, 2, 3])\n    False\n    >>> below_zero([1, 2, -4, 5])\n    True\n    """\n')
QUESTIONS = ["Complete this Python function:\n" + CODE, "What is the capital of France?"]


@pytest.fixture(scope="module")
async def target() -> AsyncIterator[LocalModelBackend]:
    async with started("llamacpp", context_length=4096) as backend:
        yield backend


@pytest.fixture(scope="module")
async def draft() -> AsyncIterator[LocalModelBackend]:
    async with started("llamacpp", context_length=4096) as backend:  # the same model, its own context
        yield backend


def speculative(target: LocalModelBackend, small: LocalModelBackend | None, **config: Any) -> Speculative:
    backends: dict[str, Any] = {"slm": target} | ({"small": small} if small is not None else {})
    spec = SpeculativeStrategy.model_validate({"type": "speculative", "target": "slm", **config})
    return Speculative("spec", spec, GatewayResources(backends=backends, prices={}))


async def chat(spec: Speculative, question: str, max_tokens: int) -> tuple[list[int], RequestRecord]:
    record = RequestRecord("r", "spec", "/v1/chat/completions", stream=False)
    view = ChatRequestView(messages=[ChatMessage(role="user", content=question)],
                           params=SamplingParams(max_tokens=max_tokens, temperature=0.0), stream=False)
    tokens = [t async for e in spec.chat(view, RequestContext(record, spec.resources))
              if isinstance(e, TokenChunk) for t in e.token_ids]
    return tokens, record


async def assert_target_alone(target: LocalModelBackend, question: str, tokens: list[int], max_tokens: int) -> None:
    """Token-identical to the backend's own greedy answer, or parted at a float tie (a near-equal
    top two that the target alone itself decides by the KV pool's layout)."""
    messages = [ChatMessage(role="user", content=question)]
    reference = (await collect(target.stream_chat(messages, SamplingParams(max_tokens=max_tokens,
                                                                           temperature=0.0)))).token_ids
    scorer = target.token_scorer()
    assert scorer is not None
    prompt = await scorer.tokenize(await target.render_chat_prompt(messages) or "")
    same = await agreement(scorer, prompt, tokens, reference)
    assert same.identical or same.tie, (question, same)


@pytest.mark.parametrize("adaptive", [False, True])
async def test_ngram_drafts_give_the_target_alone_answer(target: LocalModelBackend, adaptive: bool) -> None:
    spec = speculative(target, None, draft={"ngram": {"max_n": 3, "k": 8}}, k=4, adaptive_k=adaptive)
    await spec.start()
    for question in QUESTIONS:
        tokens, record = await chat(spec, question, 64)
        await assert_target_alone(target, question, tokens, 64)
        stats = record.extra["speculative"]
        assert stats["emitted"] == record.extra["speculative"]["emitted"] > 0
        if not adaptive and question is QUESTIONS[0]:
            # Forced speculation on code that restates its prompt: drafts are kept and rejected.
            per = stats["drafters"]["ngram"]
            assert per["accepted"] > 0 and per["rejections"] > 0
            assert stats["target_passes"] < stats["emitted"]


async def test_a_model_drafter_through_the_real_scorer(target: LocalModelBackend, draft: LocalModelBackend) -> None:
    """The same model drafting for itself keeps every draft: k drafts and the bonus per pass."""
    spec = speculative(target, draft, draft={"backend": "small"}, k=4, adaptive_k=False)
    await spec.start()
    tokens, record = await chat(spec, QUESTIONS[1], 30)
    await assert_target_alone(target, QUESTIONS[1], tokens, 30)
    stats = record.extra["speculative"]
    assert stats["acceptance_rate"] == 1.0 and stats["target_passes"] <= stats["emitted"] / 5 + 1
    assert {c.purpose for c in record.calls} == {"verify", "draft"}
    assert stats["costs"]["draft_cost"]["small"] > 0


async def test_rounds_reuse_the_engine_prefix_cache(target: LocalModelBackend) -> None:
    spec = speculative(target, None, draft={"ngram": {}}, k=4, adaptive_k=False)
    await spec.start()
    prompt = await target.token_scorer().tokenize(CODE)  # type: ignore[union-attr]
    record = RequestRecord("r", "spec", "/v1/completions", stream=False)
    await chat(spec, "warm-up: calibrate first", 4)  # calibration junk stays out of the count below
    before = target.engine.stats.decoded_tokens
    out = [t async for e in spec.completion(CompletionPrompt(token_ids=prompt), SamplingParams(max_tokens=48,
                                                                                               temperature=0.0),
                                            RequestContext(record, spec.resources))
           if isinstance(e, TokenChunk) for t in e.token_ids]
    decoded = target.engine.stats.decoded_tokens - before
    stats = record.extra["speculative"]
    # The prompt once, then per round only the last token and the drafts: never the context again.
    assert decoded <= len(prompt) + len(out) + stats["drafted"] + 1, (decoded, len(prompt), stats)
    assert stats["rounds"] > 3


async def test_sampling_through_the_real_scorer_is_seeded(target: LocalModelBackend) -> None:
    spec = speculative(target, None, draft={"ngram": {}}, k=4, adaptive_k=False)
    await spec.start()
    prompt = await target.token_scorer().tokenize(CODE)  # type: ignore[union-attr]

    async def sample(seed: int) -> list[int]:
        record = RequestRecord("r", "spec", "/v1/completions", stream=False)
        params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=seed)
        return [t async for e in spec.completion(CompletionPrompt(token_ids=prompt), params,
                                                 RequestContext(record, spec.resources))
                if isinstance(e, TokenChunk) for t in e.token_ids]

    first = await sample(5)
    assert first == await sample(5) and first
