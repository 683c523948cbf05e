"""The collaboration policies: the default policy's `auto` pre-router, policies/examples/code.yaml,
and the cascade's code features (structural escalation, a speculative model as the last tier)
through the real strategy objects, on scripted backends (routing logic only; the real pair runs in
tests/test_humaneval_qwen.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.core.backend import (
    BackendCapabilities,
    ChatMessage,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.record import RequestRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext
from policies.loader import load_policy
from routers.cascade.config import CascadeStrategy
from routers.cascade.strategy import Cascade
from routers.rules.config import RulesStrategy
from routers.static.config import StaticStrategy
from routers.static.strategy import Static
from tests.rules_support import RecordingBackend, answer, build, two_backends, view

REPO = Path(__file__).resolve().parent.parent


async def test_default_auto_keeps_chat_local_and_sends_code_and_tools_to_the_llm() -> None:
    config = load_policy().models["auto"]
    assert isinstance(config, RulesStrategy)
    rules = await build(config.model_dump(exclude={"type"}, exclude_none=True), list(two_backends()))
    for text, route in (("hello, how are you?", "slm"), ("What is the capital of France?", "slm"),
                        ("Write a Python function that reverses a list.", "llm"),
                        ("Fix this:\n```\nx = = 1\n```", "llm"), ("Solve 3x + 5 = 11 step by step.", "llm")):
        _text, ctx, _chunks = await answer(rules, view(text))
        assert ctx.record.route == route, text


def test_code_example_resolves_the_pair_from_the_models_directory(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from gateway.backends.local.source import resolve_source

    policy = load_policy(REPO / "policies" / "examples" / "code.yaml")
    assert {"small", "large", "cascade", "speculative"} <= set(policy.models)
    cascade = policy.models["cascade"]
    assert isinstance(cascade, CascadeStrategy) and cascade.tiers[0].structural == "python_examples"
    assert cascade.tiers[0].calibration is not None and cascade.tiers[0].threshold is not None
    monkeypatch.setenv("SLM_GATEWAY_MODELS", str(tmp_path))
    for backend in ("small", "large"):
        model = str(getattr(policy.backends[backend], "model", ""))
        assert model.startswith("${SLM_GATEWAY_MODELS}/")
        (tmp_path / Path(model).name).write_bytes(b"GGUF")
        assert resolve_source(model).directory == tmp_path


class Scripted(RecordingBackend):
    """Echoes the user's text (RecordingBackend): a request carrying broken code gets broken code."""


async def cascade_over(config: dict[str, Any], small: RecordingBackend | None = None,
                       large: RecordingBackend | None = None) -> tuple[Cascade, RecordingBackend, RecordingBackend]:
    small, large = small or Scripted("small", local=True), large or Scripted("large", local=False)
    resources = GatewayResources(backends={"small": small, "large": large}, prices={})
    resources.strategies["big"] = Static("big", StaticStrategy(type="static", backend="large"), resources)
    cascade = Cascade("cascade", CascadeStrategy.model_validate({"type": "cascade", **config}), resources)
    resources.strategies["cascade"] = cascade
    await cascade.start()
    return cascade, small, large


async def run(cascade: Cascade, text: str) -> RequestContext:
    ctx = RequestContext(RequestRecord("req", "cascade", "chat", False), cascade.resources)
    events = [e async for e in cascade.chat(view(text), ctx)]
    assert isinstance(events[-1], AnswerDone)
    return ctx


# Calibrated to a constant high confidence: only the structural check can escalate.
CONFIDENT = {"backend": "small", "scorer": "code_mean_logprob", "threshold": 0.5,
             "calibration": {"x": [-1.0, 0.0], "y": [0.9, 0.9]}}


@pytest.mark.parametrize("last", ["large", "model:big"])
async def test_malformed_code_escalates_whatever_the_confidence(last: str) -> None:
    cascade, _small, large = await cascade_over({"tiers": [{**CONFIDENT, "structural": "python"}, {"backend": last}]})
    good = await run(cascade, "Complete:\n```python\ndef add(a, b):\n    return a + b\n```")
    assert good.record.route == "small" and not good.record.escalated
    broken = await run(cascade, "Complete:\n```python\ndef add(a, b) return a + b\n```")
    assert broken.record.escalated and broken.record.extra["structural"] == [{"tier": "small", "reason": "syntax"}]
    assert len(large.received) == 1  # the escalated request, through the delegate model or directly
    plain, _small, _large = await cascade_over({"tiers": [CONFIDENT, {"backend": last}]})
    assert not (await run(plain, "Complete:\n```python\ndef add(a, b) return a + b\n```")).record.escalated


def test_a_model_tier_only_last_and_not_in_handoff() -> None:
    with pytest.raises(ValueError, match="only the last tier"):
        CascadeStrategy.model_validate({"type": "cascade", "tiers": [
            {"backend": "model:x", "threshold": 0.5}, {"backend": "large"}]})
    with pytest.raises(ValueError, match="handoff"):
        CascadeStrategy.model_validate({"type": "cascade", "mode": "handoff", "tiers": [
            {**CONFIDENT, "early_exit": {}}, {"backend": "model:big"}]})
    config = CascadeStrategy.model_validate({"type": "cascade", "tiers": [CONFIDENT, {"backend": "model:big"}]})
    assert config.referenced_backends() == ["small"] and config.referenced_models() == ["big"]


ADD_REQUEST = ('Complete:\n```python\ndef add(a, b):\n    """Add two numbers.\n    >>> add(2, 3)\n    5\n    '
               'add(-1, 1) ➞ 0\n    """\n    return {body}\n```')


async def test_code_failing_the_requests_own_examples_escalates() -> None:
    """``python_examples``: the scripted small tier echoes the request, whose body is the answer;
    the check runs it in the real sandbox against the docstring's two examples."""
    cascade, _small, large = await cascade_over({"tiers": [{**CONFIDENT, "structural": "python_examples"},
                                                           {"backend": "large"}]})
    right = await run(cascade, ADD_REQUEST.format(body="a + b"))
    assert right.record.route == "small" and "structural" not in right.record.extra
    wrong = await run(cascade, ADD_REQUEST.format(body="a * b"))  # add(2, 3) gives 6
    assert wrong.record.escalated and len(large.received) == 1
    [reason] = wrong.record.extra["structural"]
    assert reason["tier"] == "small" and reason["reason"].startswith("examples: 2 of 2 examples fail")
    looping = await run(cascade, ADD_REQUEST.format(body="[x for x in iter(int, 1)]"))
    assert looping.record.escalated and "examples:" in looping.record.extra["structural"][0]["reason"]
    # ``python`` alone does not run anything: the wrong body is kept.
    plain, _small, _large = await cascade_over({"tiers": [{**CONFIDENT, "structural": "python"}, {"backend": "large"}]})
    assert not (await run(plain, ADD_REQUEST.format(body="a * b"))).record.escalated


class Continuing(RecordingBackend):
    """Continues a prefill with the body the test writes after ``body:`` in the user message."""

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=self.local, prefix_continuation=True)

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        self.received.append(list(messages))
        assert messages[-1].role == "assistant" and params.extra.get("continue_final_message")
        yield TokenChunk(messages[-2].content.split("body:", 1)[1], token_ids=(0,))
        yield GenerationDone("stop", 1, 1, self.model_name)


async def test_a_prefilled_answer_is_checked_whole_against_the_prefills_examples() -> None:
    """The request's code only in the continued assistant message (as ``eval --task humaneval``
    sends it): the checks read the code and its examples from the prefill, and judge prefill +
    continuation."""
    cascade, _small, large = await cascade_over(
        {"tiers": [{**CONFIDENT, "structural": "python_examples"}, {"backend": "large"}]},
        small=Continuing("small", local=True), large=Continuing("large", local=False))
    prefill = '```python\ndef add(a, b):\n    """Add.\n    >>> add(2, 3)\n    5\n    """\n'
    params = SamplingParams(extra={"continue_final_message": True})
    for body, escalated in (("    return a + b\n", False), ("    return a * b\n", True), ("return (\n", True)):
        messages = [ChatMessage(role="user", content=f"Complete it. body:{body}"),
                    ChatMessage(role="assistant", content=prefill)]
        request = ChatRequestView(messages=messages, params=params, stream=False)
        ctx = RequestContext(RequestRecord("req", "cascade", "chat", False), cascade.resources)
        events = [e async for e in cascade.chat(request, ctx)]
        assert isinstance(events[-1], AnswerDone)
        assert ctx.record.escalated is escalated, body
    assert len(large.received) == 2
