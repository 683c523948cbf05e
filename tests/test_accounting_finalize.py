"""finalize_record's arithmetic, checked against prices by hand, and the one place calls are priced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.accounting.finalize import finalize_record
from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.config import Price
from gateway.core.record import CallRecord, RequestRecord
from gateway.core.strategy import GatewayResources, RequestContext

SLM = Price(input_per_1m=0.10, output_per_1m=0.20)
LLM = Price(input_per_1m=2.50, output_per_1m=10.00)


def call(backend: str, price: Price, prompt: int, completion: int, *, used: bool = True) -> CallRecord:
    return CallRecord(
        backend=backend, model=backend, started_at=0.0, prompt_tokens=prompt,
        completion_tokens=completion, cost_usd=price.cost(prompt, completion), used=used,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_cascade_that_escalated_pays_for_both_attempts(stream: bool) -> None:
    record = RequestRecord("r1", "auto", "chat", stream=stream, route="slm>llm", escalated=True)
    record.calls = [call("slm", SLM, 120, 40, used=False), call("llm", LLM, 118, 60)]
    finalize_record(record, LLM)
    # By hand: slm 120*0.10e-6 + 40*0.20e-6 = 0.000012 + 0.000008 = 0.000020
    #          llm 118*2.50e-6 + 60*10.0e-6 = 0.000295 + 0.000600 = 0.000895
    assert record.cost_usd == pytest.approx(0.000915, abs=1e-12)
    assert record.wasted_cost_usd == pytest.approx(0.000020, abs=1e-12)
    # Answer tokens are the used call's: the discarded attempt's prompt is not counted again.
    assert (record.prompt_tokens, record.completion_tokens) == (118, 60)
    assert record.reference_cost_usd == pytest.approx(0.000895, abs=1e-12)
    assert record.savings_usd == pytest.approx(-0.000020, abs=1e-12)


@pytest.mark.parametrize("stream", [False, True])
def test_slm_answer_saves_the_llm_price(stream: bool) -> None:
    record = RequestRecord("r2", "auto", "/v1/chat/completions", stream=stream, route="slm")
    record.calls = [call("slm", SLM, 1000, 500)]
    finalize_record(record, LLM)
    assert record.cost_usd == pytest.approx(0.0002, abs=1e-12)  # 1000*0.1e-6 + 500*0.2e-6
    assert record.reference_cost_usd == pytest.approx(0.0075, abs=1e-12)  # 1000*2.5e-6 + 500*10e-6
    assert record.savings_usd == pytest.approx(0.0073, abs=1e-12)
    assert record.cost_usd > 0  # a streamed answer is never $0 when its backend has a price


def test_speculative_rounds_count_the_prompt_once() -> None:
    record = RequestRecord("r3", "auto", "/v1/chat/completions", stream=True, route="speculative")
    record.calls = [
        call("draft", SLM, 50, 8, used=True),
        call("verify", LLM, 50, 1, used=True),
        call("draft", SLM, 58, 8, used=True),  # the next round's prompt carries accepted text
        call("verify", LLM, 58, 1, used=True),
    ]
    finalize_record(record, LLM)
    assert record.prompt_tokens == 50
    assert record.completion_tokens == 18
    assert record.cost_usd == pytest.approx(sum(c.cost_usd for c in record.calls))


def test_answer_usage_set_by_the_app_is_kept() -> None:
    record = RequestRecord("r4", "auto", "/v1/chat/completions", stream=False, route="llm",
                           prompt_tokens=7, completion_tokens=3)
    record.calls = [call("llm", LLM, 9, 3)]
    finalize_record(record, LLM)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 3)
    assert record.reference_cost_usd == pytest.approx((7 * 2.5 + 3 * 10) / 1e6)


def test_failed_call_is_still_billed_and_no_reference_means_no_savings() -> None:
    failed = call("llm", LLM, 100, 0, used=False)
    failed.status = "upstream_timeout"
    record = RequestRecord("r5", "auto", "/v1/chat/completions", stream=False, route="llm", status="error")
    record.calls = [failed]
    finalize_record(record, None)
    assert record.cost_usd == pytest.approx(0.00025)
    assert record.reference_cost_usd is None and record.savings_usd is None
    assert (record.prompt_tokens, record.completion_tokens) == (0, 0)


class TwoTokens(Backend):
    """A scripted backend (pricing logic only): two tokens, then usage 31 prompt / 2 completion."""

    @property
    def model_name(self) -> str:
        return "two"

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        yield TokenChunk("a", token_ids=(1,))
        yield TokenChunk("b", token_ids=(2,))
        yield GenerationDone("stop", 31, 2, "two")

    def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError


def test_each_call_is_priced_once_when_it_ends_and_finalize_only_sums() -> None:
    async def scenario() -> RequestRecord:
        record = RequestRecord("r6", "llm", "chat", stream=True, route="llm")
        ctx = RequestContext(record, GatewayResources(backends={"llm": TwoTokens("llm")}, prices={"llm": LLM}))
        answered = ctx.call_chat("llm", [ChatMessage(role="user", content="hi")], SamplingParams())
        async for event in answered:
            if isinstance(event, GenerationDone):
                break  # left suspended after its last event: priced all the same
        cut = ctx.call_chat("llm", [ChatMessage(role="user", content="hi")], SamplingParams())
        await anext(cut)
        await cut.aclose()  # cut short after one token (client gone): priced for what it used
        return record

    record = asyncio.run(scenario())
    answered, cut = record.calls
    assert answered.cost_usd == pytest.approx((31 * 2.5 + 2 * 10) / 1e6)
    assert cut.completion_tokens == 1 and cut.cost_usd == pytest.approx(10 / 1e6)
    costs = [c.cost_usd for c in record.calls]
    finalize_record(record, LLM)
    assert [c.cost_usd for c in record.calls] == costs  # not priced a second time
    assert record.cost_usd == pytest.approx(sum(costs))
