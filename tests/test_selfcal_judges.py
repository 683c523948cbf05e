"""Self-calibration's agreement judges (issue 22) and their policy checks: exact, normalized,
json (structured outputs and tool calls), embedding (the real local embedder, all-MiniLM-L6-v2)
and llm (a scripted judge backend: its replies, its recorded and priced call)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gateway.backends.embedding.backend import LocalEmbeddingBackend
from gateway.backends.embedding.config import EmbeddingBackend
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
from gateway.core.record import RequestRecord
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from policies.loader import PolicyError, parse_policy
from routers.cascade.config import CascadeStrategy
from routers.cascade.selfcal.config import SelfCalibration
from routers.cascade.selfcal.judges.base import Answer, Judge
from routers.cascade.selfcal.judges.build import build_judge

REQUEST = ChatRequestView(messages=[ChatMessage(role="user", content="What is the capital of France?")],
                          params=SamplingParams(), stream=False)


def judge_of(judge: dict[str, Any]) -> Judge:
    return build_judge(SelfCalibration.model_validate({"judge": judge}).judge)


def context(backends: dict[str, Backend] | None = None, prices: dict[str, Price] | None = None) -> RequestContext:
    record = RequestRecord(request_id="shadow-1", public_model="cascade", endpoint="shadow", stream=False)
    return RequestContext(record, GatewayResources(backends=backends or {}, prices=prices or {}))


async def verdict(judge: Judge, small: str | Answer, large: str | Answer, ctx: RequestContext | None = None) -> bool:
    a = small if isinstance(small, Answer) else Answer(small)
    b = large if isinstance(large, Answer) else Answer(large)
    return (await judge.judge(REQUEST, a, b, ctx or context())).agree


async def test_exact() -> None:
    judge = judge_of({"type": "exact"})
    assert await verdict(judge, " Paris\n", "Paris") and not await verdict(judge, "paris", "Paris")
    assert not await verdict(judge_of({"type": "exact", "strip": False}), "Paris ", "Paris")


@pytest.mark.parametrize(("small", "large", "agree"), [
    ("B", "(B)", True), ("Answer: B", "The answer is B.", True), ("B) Paris", "b", True), ("A", "B", False),
    ("The answer is 1,000.", "1000.0", True), ("42", "43", False), ("-3.5", "x = -3.50", True),
    ("The Eiffel Tower!", "eiffel tower", True), ("A cat sat.", "the cat sat", True), ("Paris", "Lyon", False),
])
async def test_normalized_auto(small: str, large: str, agree: bool) -> None:
    assert await verdict(judge_of({"type": "normalized"}), small, large) is agree


async def test_normalized_modes() -> None:
    letter = judge_of({"type": "normalized", "extract": "letter"})
    assert await verdict(letter, "I think the answer is (C) because ...", "C")
    assert not await verdict(letter, "so option D.", "C")
    number = judge_of({"type": "normalized", "extract": "number", "number_tolerance": 0.01})
    assert await verdict(number, "First 3 apples, then a total of 100 apples", "100.5")
    assert not await verdict(number, "a total of 100 apples", "102")
    text = judge_of({"type": "normalized", "extract": "text"})
    assert not await verdict(text, "B", "(B) Paris")


async def test_json_structured_outputs() -> None:
    judge = judge_of({"type": "json", "ignore_keys": ["id"]})
    assert await verdict(judge, '{"a": 1, "b": [1, {"c": null}]}', '```json\n{"b": [1, {"c": null}], "a": 1.0}\n```')
    assert await verdict(judge, 'Here it is: {"a": 1, "id": 7}', '{"a": 1, "id": 8}')
    assert not await verdict(judge, '{"b": [2, 1]}', '{"b": [1, 2]}')
    assert not await verdict(judge, '{"a": true}', '{"a": 1}')  # a bool is no number
    assert not await verdict(judge, "not json", "not json")
    tolerant = judge_of({"type": "json", "number_tolerance": 0.01})
    assert await verdict(tolerant, '{"x": 100}', '{"x": 100.5}')


def tool_call(name: str, arguments: str, index: int = 0) -> dict[str, Any]:
    return {"index": index, "id": f"call_{index}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


async def test_json_tool_calls_from_streamed_fragments() -> None:
    streamed = Answer.of([
        TokenChunk(text="", tool_calls=({"index": 0, "id": "c1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": '{"city": '}},)),
        TokenChunk(text="", tool_calls=({"index": 0, "function": {"arguments": '"Paris", "unit": "C"}'}},)),
    ])
    assert streamed.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}
    judge = judge_of({"type": "json"})
    same = Answer("", (tool_call("get_weather", '{"unit": "C", "city": "Paris"}'),))
    other = Answer("", (tool_call("get_weather", '{"unit": "F", "city": "Paris"}'),))
    renamed = Answer("", (tool_call("get_time", '{"unit": "C", "city": "Paris"}'),))
    assert await verdict(judge, streamed, same)
    assert not await verdict(judge, streamed, other) and not await verdict(judge, streamed, renamed)
    assert not await verdict(judge, streamed, Answer('{"city": "Paris"}'))  # a call against a text answer
    assert '"get_weather"' in streamed.as_text()


class ScriptedJudgeBackend(Backend):
    """Replies with a fixed text; keeps the messages it was sent."""

    def __init__(self, reply: str) -> None:
        super().__init__("judge")
        self.reply = reply
        self.seen: list[Sequence[ChatMessage]] = []

    @property
    def model_name(self) -> str:
        return "scripted-judge"

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        self.seen.append(messages)
        yield TokenChunk(text=self.reply, token_ids=(1, 2))
        yield GenerationDone(finish_reason="stop", prompt_tokens=120, completion_tokens=2, model=self.model_name)

    def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError


@pytest.mark.parametrize(("reply", "agree", "unparsed"), [
    ("SAME", True, False), ("Same.", True, False), ("DIFFERENT", False, False), ("**different**", False, False),
    ("I cannot tell", False, True), ("", False, True),
])
async def test_llm_judge_rubric_reply_and_its_recorded_call(reply: str, agree: bool, unparsed: bool) -> None:
    backend = ScriptedJudgeBackend(reply)
    price = Price(input_per_1m=2.0, output_per_1m=8.0)
    ctx = context({"judge": backend}, {"judge": price})
    judge = judge_of({"type": "llm", "backend": "judge"})
    result = await judge.judge(REQUEST, Answer("Paris."), Answer("The capital is Paris."), ctx)
    assert result.agree is agree and bool(result.detail.get("unparsed")) is unparsed
    system, user = backend.seen[0]
    assert "SAME" in system.content and "DIFFERENT" in system.content
    assert "capital of France" in user.content and user.content.index("The capital is Paris.") < \
        user.content.index("Paris.\n\nSAME")  # the reference first, the judged answer second
    (call,) = ctx.record.calls
    assert (call.backend, call.used, call.purpose) == ("judge", False, "judge")
    assert call.cost_usd == pytest.approx(price.cost(120, 2))
    estimate = judge.estimated_cost_usd(REQUEST, Answer("Paris."), Answer("The capital is Paris."), {"judge": price})
    assert 0 < estimate < price.cost(200, 4)


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LocalEmbeddingBackend]:
    backend = LocalEmbeddingBackend("embedder", EmbeddingBackend(type="embedding", threads=1))
    await backend.start()
    yield backend
    await backend.close()


async def test_embedding_judge_on_the_real_local_embedder(embedder: LocalEmbeddingBackend) -> None:
    ctx = context({"embedder": embedder}, {"embedder": Price()})
    judge = judge_of({"type": "embedding", "backend": "embedder", "min_similarity": 0.8})
    close = await judge.judge(REQUEST, Answer("The capital of France is Paris."), Answer("Paris is France's capital."),
                              ctx)
    far = await judge.judge(REQUEST, Answer("The capital of France is Paris."),
                            Answer("Bananas are rich in potassium."), ctx)
    assert close.agree and not far.agree
    assert close.detail["similarity"] > 0.8 > far.detail["similarity"]
    assert [(c.backend, c.used, c.purpose) for c in ctx.record.calls] == [("embedder", False, "judge")] * 2
    assert all(c.prompt_tokens > 0 for c in ctx.record.calls)


def policy(judge: dict[str, Any], **tier: Any) -> dict[str, Any]:
    return {"backends": {"slm": {"type": "echo"}, "llm": {"type": "echo"}},
            "models": {"cascade": {"type": "cascade", "tiers": [
                {"backend": "slm", "threshold": -1.0, "self_calibration": {"judge": judge}, **tier},
                {"backend": "llm"}]}}}


def test_policy_check_knows_the_judge_backends() -> None:
    with pytest.raises(PolicyError, match="unknown backend 'grader'"):
        parse_policy(policy({"type": "llm", "backend": "grader"}))
    parsed = parse_policy(policy({"type": "llm", "backend": "llm"}))
    config = parsed.models["cascade"]
    assert isinstance(config, CascadeStrategy)
    assert config.referenced_backends() == ["slm", "llm"] and config.tier_backends() == ["slm", "llm"]
    with_grader = policy({"type": "embedding", "backend": "grader"})
    with_grader["backends"]["grader"] = {"type": "echo"}
    config = parse_policy(with_grader).models["cascade"]
    assert isinstance(config, CascadeStrategy) and config.referenced_backends() == ["slm", "llm", "grader"]
    with pytest.raises(PolicyError, match="judge"):
        parse_policy(policy({"type": "telepathy"}))


@pytest.mark.parametrize(("cascade", "message"), [
    ({"tiers": [{"backend": "slm", "threshold": 0}, {"backend": "llm",
                                                    "self_calibration": {"judge": {"type": "exact"}}}]}, "last tier"),
    ({"mode": "handoff", "tiers": [{"backend": "slm", "threshold": 0, "early_exit": {},
                                    "self_calibration": {"judge": {"type": "exact"}}}, {"backend": "llm"}]},
     "apply: false"),
    ({"mode": "handoff", "tiers": [{"backend": "slm", "threshold": 0, "early_exit": {}},
                                   {"backend": "mid", "threshold": 0, "early_exit": {},
                                    "self_calibration": {"judge": {"type": "exact"}, "apply": False}},
                                   {"backend": "llm"}]}, "only the first tier"),
])
def test_self_calibration_placement_is_validated(cascade: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CascadeStrategy.model_validate({"type": "cascade", **cascade})
    ok = {"type": "cascade", "mode": "handoff", "tiers": [
        {"backend": "slm", "threshold": 0, "early_exit": {}, "self_calibration": {"judge": {"type": "exact"},
                                                                                   "apply": False}},
        {"backend": "llm"}]}
    assert CascadeStrategy.model_validate(ok).tiers[0].self_calibration is not None
