"""The ``rules`` strategy: rule order, each condition, token-count boundaries, the privacy guard.

Unit tests drive the strategy with small in-test backends that record what they receive;
the end-to-end test runs a real gateway (in-process, SmolLM2) in front of a recording fake
OpenAI upstream and checks that no byte of a card number reaches it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.record import RequestRecord
from gateway.backends.base import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.errors import InvalidRequestError, PermissionDeniedError
from policies.loader import PolicyError, load_policy
from policies.strategies import RulesStrategy, StaticStrategy
from routers.base import AnswerDone, ChatRequestView, GatewayResources, RequestContext, Strategy
from routers.privacy.redaction import Redactor, StreamRestorer
from routers.rules.strategy import Rules
from routers.static import Static

CARD = "4111 1111 1111 1111"
EMAIL = "jane.roe@example.com"
REPO = Path(__file__).resolve().parent.parent


class RecordingBackend(Backend):
    """Echoes the last user message back in ``chunk_size``-character chunks; keeps every request."""

    def __init__(
        self, name: str, *, local: bool, chunk_size: int = 3, words_are_tokens: bool = False
    ) -> None:
        super().__init__(name)
        self.local = local
        self.chunk_size = chunk_size
        self.words_are_tokens = words_are_tokens
        self.received: list[list[ChatMessage]] = []
        self.extra_received: list[dict[str, Any]] = []

    @property
    def model_name(self) -> str:
        return f"{self.name}-model"

    @property
    def is_local(self) -> bool:
        return self.local

    async def tokenize(self, text: str) -> list[int] | None:
        return list(range(len(text.split()))) if self.words_are_tokens else None

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        self.received.append(list(messages))
        self.extra_received.append(dict(params.extra))
        answer = f"echo: {next(m.content for m in reversed(messages) if m.role == 'user')}"
        size = self.chunk_size
        for start in range(0, len(answer), size):
            yield TokenChunk(answer[start:start + size], token_ids=(start,))
        yield GenerationDone("stop", 1, len(answer), self.model_name)

    async def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError
        yield  # pragma: no cover

    def seen_text(self) -> str:
        messages = "\n".join(m.content for sent in self.received for m in sent)
        return messages + repr(self.extra_received)


async def build(
    config: dict[str, Any], backends: list[RecordingBackend], statics: dict[str, str] | None = None
) -> Rules:
    resources = GatewayResources(backends={b.name: b for b in backends}, prices={})
    strategies: dict[str, Strategy[Any]] = {
        name: Static(name, StaticStrategy(type="static", backend=backend), resources)
        for name, backend in (statics or {}).items()
    }
    rules = Rules("auto", RulesStrategy.model_validate({"type": "rules", **config}), resources)
    strategies["auto"] = rules
    resources.strategies.update(strategies)
    await rules.start()
    return rules


def view(text: str = "hello", **kwargs: Any) -> ChatRequestView:
    system = kwargs.pop("system", None)
    messages = ([ChatMessage(role="system", content=system)] if system else []) + [
        ChatMessage(role="user", content=text)]
    params = kwargs.pop("params", SamplingParams())
    return ChatRequestView(messages=messages, params=params, stream=True, **kwargs)


async def answer(rules: Rules, request: ChatRequestView) -> tuple[str, RequestContext, list[TokenChunk]]:
    ctx = RequestContext(RequestRecord("req-1", "auto", "chat", True), rules.resources)
    chunks: list[TokenChunk] = []
    done: list[AnswerDone] = []
    async for event in rules.chat(request, ctx):
        if isinstance(event, TokenChunk):
            chunks.append(event)
        else:
            done.append(event)
    assert len(done) == 1
    return "".join(c.text for c in chunks), ctx, chunks


def two_backends() -> tuple[RecordingBackend, RecordingBackend]:
    return RecordingBackend("slm", local=True), RecordingBackend("llm", local=False)


# --- rule order and conditions ------------------------------------------------------------

async def test_first_matching_rule_wins_and_is_recorded() -> None:
    slm, llm = two_backends()
    rules = [{"name": "code", "when": {"keywords": ["python"]}, "target": "llm"},
             {"name": "anything", "when": {}, "target": "slm"}]
    strategy = await build({"rules": rules, "default": "slm"}, [slm, llm])
    _, ctx, _ = await answer(strategy, view("Write Python code"))
    assert (ctx.record.rule, ctx.record.route) == ("code", "llm")
    assert ctx.response_headers["x-slm-gateway-rule"] == "code"
    swapped = await build({"rules": rules[::-1], "default": "slm"}, [slm, llm])
    _, ctx, _ = await answer(swapped, view("Write Python code"))
    assert (ctx.record.rule, ctx.record.route) == ("anything", "slm")


async def test_no_match_falls_to_default() -> None:
    slm, llm = two_backends()
    strategy = await build({"rules": [{"name": "r", "when": {"regex": "^never$"}, "target": "slm"}],
                            "default": "llm"}, [slm, llm])
    _, ctx, _ = await answer(strategy, view("hi"))
    assert (ctx.record.rule, ctx.record.route, ctx.response_headers["x-slm-gateway-rule"]) == (
        "default", "llm", "default")


@pytest.mark.parametrize("when, request_kwargs, matches", [
    ({"regex": r"\bSQL\b"}, {"text": "write SQL"}, True),
    ({"regex": r"\bSQL\b"}, {"text": "write sql"}, False),
    ({"regex": "pirate", "on": "system"}, {"text": "hi", "system": "You are a pirate"}, True),
    ({"regex": "pirate", "on": "system"}, {"text": "pirate"}, False),
    ({"keywords": ["step by step", "prove"]}, {"text": "Prove it"}, True),
    ({"keywords": ["prove"]}, {"text": "improve it"}, False),  # whole words only
    ({"has_tools": True}, {"has_tools": True}, True),
    ({"has_tools": True}, {}, False),
    ({"has_response_format": False}, {}, True),
    ({"user": "alice"}, {"user": "alice"}, True),
    ({"user": "alice"}, {"user": "alice2"}, False),
    ({"user": {"regex": "team-.*"}}, {"user": "team-ops"}, True),
    ({"user": {"regex": "team-.*"}}, {}, False),
    ({"header": {"name": "X-Tier", "equals": "gold"}}, {"headers": {"x-tier": "gold"}}, True),
    ({"header": {"name": "x-tier", "regex": "gold|silver"}}, {"headers": {"X-Tier": "bronze"}}, False),
    ({"key_tags": ["premium", "beta"]}, {"key_tags": ("beta",)}, True),
    ({"key_tags": ["premium"]}, {"key_tags": ("free",)}, False),
    ({"sensitive": True}, {"text": f"mail {EMAIL}"}, True),
    ({"sensitive": True}, {"text": "nothing here"}, False),
    ({"sensitive": False, "keywords": ["hi"]}, {"text": "hi"}, True),
])
async def test_each_condition(when: dict[str, Any], request_kwargs: dict[str, Any], matches: bool) -> None:
    slm, llm = two_backends()
    rules = [{"name": "r", "when": when, "target": "llm"}]
    strategy = await build({"rules": rules, "default": "slm"}, [slm, llm])
    text = request_kwargs.pop("text", "hello")
    _, ctx, _ = await answer(strategy, view(text, **request_kwargs))
    assert (ctx.record.rule == "r") is matches


@pytest.mark.parametrize("words, rule", [(5, "short"), (6, "long")])
async def test_token_rule_boundary_with_the_targets_tokenizer(words: int, rule: str) -> None:
    slm = RecordingBackend("slm", local=True, words_are_tokens=True)
    llm = RecordingBackend("llm", local=False)
    rules = [{"name": "short", "when": {"prompt_tokens": {"max": 5}}, "target": "slm"},
             {"name": "long", "when": {"prompt_tokens": {"min": 6}}, "target": "slm"}]
    strategy = await build({"rules": rules, "default": "llm"}, [slm, llm])
    # 5 words of 10 characters: the chars/4 estimate would say 15 tokens.
    _, ctx, _ = await answer(strategy, view(" ".join(["abcdefghij"] * words)))
    assert ctx.record.rule == rule


@pytest.mark.parametrize("chars, rule", [(20, "short"), (21, "long")])
async def test_token_rule_boundary_with_the_chars_per_4_estimate(chars: int, rule: str) -> None:
    slm, llm = two_backends()  # llm has no local tokenizer: ceil(chars / 4)
    strategy = await build({"rules": [{"name": "short", "when": {"prompt_tokens": {"min": 5, "max": 5}},
                                       "target": "llm"}], "default": "slm"}, [slm, llm])
    strategy_long = await build({"rules": [{"name": "long", "when": {"prompt_tokens": {"min": 6}},
                                            "target": "llm"}], "default": "slm"}, [slm, llm])
    text = "x" * chars
    _, ctx_short, _ = await answer(strategy, view(text))
    _, ctx_long, _ = await answer(strategy_long, view(text))
    assert rule in (ctx_short.record.rule, ctx_long.record.rule)
    assert (ctx_short.record.rule == "short") is (rule == "short")


async def test_token_count_with_the_real_smollm2_tokenizer(smollm2: tuple[Any, Any]) -> None:
    _, tokenizer = smollm2

    class Tokenizing(RecordingBackend):
        async def tokenize(self, text: str) -> list[int] | None:
            ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
            return ids

    slm, llm = Tokenizing("slm", local=True), RecordingBackend("llm", local=False)
    text = "The quick brown fox jumps over the lazy dog."
    count = len(tokenizer.encode(text, add_special_tokens=False))
    assert count != -(-len(text) // 4)  # the boundary below would not hold with the estimate
    for bound, rule in ((count, "fits"), (count - 1, "default")):
        strategy = await build({"rules": [{"name": "fits", "when": {"prompt_tokens": {"max": bound}},
                                           "target": "slm"}], "default": "llm"}, [slm, llm])
        _, ctx, _ = await answer(strategy, view(text))
        assert ctx.record.rule == rule


async def test_model_targets_delegate_and_prefixes_disambiguate() -> None:
    slm, llm = two_backends()
    config = {"rules": [{"name": "m", "when": {"keywords": ["big"]}, "target": "model:big"},
                        {"name": "b", "when": {"keywords": ["small"]}, "target": "backend:slm"}],
              "default": "big"}
    strategy = await build(config, [slm, llm], statics={"big": "llm"})
    _, ctx, _ = await answer(strategy, view("a big question"))
    assert (ctx.record.rule, ctx.record.route) == ("m", "llm")
    _, ctx, _ = await answer(strategy, view("a small question"))
    assert (ctx.record.rule, ctx.record.route) == ("b", "slm")


async def test_start_rejects_unknown_targets_and_self_delegation() -> None:
    slm, llm = two_backends()
    with pytest.raises(PolicyError, match="nowhere"):
        await build({"rules": [{"name": "x", "target": "nowhere"}], "default": "slm"}, [slm, llm])
    with pytest.raises(PolicyError, match="delegates back"):
        await build({"rules": [], "default": "model:auto"}, [slm, llm])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        RulesStrategy.model_validate({"type": "rules", "default": "a",
                                      "rules": [{"name": "x", "target": "a"}, {"name": "x", "target": "b"}]})
    with pytest.raises(ValueError, match="invalid regex"):
        RulesStrategy.model_validate({"type": "rules", "default": "a",
                                      "rules": [{"name": "x", "when": {"regex": "("}, "target": "a"}]})
    with pytest.raises(ValueError, match="min"):
        RulesStrategy.model_validate({"type": "rules", "default": "a", "rules": [
            {"name": "x", "when": {"prompt_tokens": {"min": 5, "max": 4}}, "target": "a"}]})


def test_example_policy_loads() -> None:
    policy = load_policy(REPO / "policies" / "examples" / "rules.yaml")
    auto = policy.models["auto"]
    assert isinstance(auto, RulesStrategy) and auto.privacy is not None
    assert auto.rules[4].when.on == "last_user"  # unquoted YAML `on:` key


# --- privacy guard ------------------------------------------------------------------------

def privacy_config(action: str, **extra: Any) -> dict[str, Any]:
    return {"rules": [], "default": "llm", "privacy": {"action": action, **extra}}


async def test_local_only_reroutes_to_the_local_backend_and_records_no_text() -> None:
    slm, llm = two_backends()
    strategy = await build(privacy_config("local_only"), [slm, llm])
    text, ctx, _ = await answer(strategy, view(f"charge {CARD} please"))
    assert ctx.record.route == "slm" and text == f"echo: charge {CARD} please"
    assert llm.received == []
    assert ctx.record.extra["privacy"] == {"detectors": ["payment_card"], "action": "local_only",
                                           "rerouted_from": "llm"}
    assert "1111" not in repr(ctx.record.to_dict())
    # A clean request still goes to the cloud (so the assertion above can fail).
    await answer(strategy, view("what is 2+2?"))
    assert len(llm.received) == 1


async def test_local_only_without_a_local_backend_refuses_with_403() -> None:
    llm = RecordingBackend("llm", local=False)
    strategy = await build(privacy_config("local_only"), [llm])
    with pytest.raises(PermissionDeniedError) as raised:
        await answer(strategy, view(f"my email is {EMAIL}"))
    assert raised.value.status_code == 403 and "email" in raised.value.message
    assert EMAIL not in raised.value.message
    assert llm.received == []


async def test_local_only_treats_a_model_reaching_the_cloud_as_not_local() -> None:
    slm, llm = two_backends()
    config = {"rules": [{"name": "to-model", "target": "model:cloud"}], "default": "slm",
              "privacy": {"action": "local_only"}}
    strategy = await build(config, [slm, llm], statics={"cloud": "llm", "home": "slm"})
    assert strategy.is_local(strategy.resolve("model:home"))
    _, ctx, _ = await answer(strategy, view("IBAN DE89 3704 0044 0532 0130 00"))
    assert ctx.record.route == "slm" and llm.received == []


async def test_block_answers_400_before_any_call() -> None:
    slm, llm = two_backends()
    strategy = await build(privacy_config("block"), [slm, llm])
    with pytest.raises(InvalidRequestError) as raised:
        await answer(strategy, view("key AKIAIOSFODNN7EXAMPLE"))
    assert raised.value.status_code == 400 and raised.value.code == "sensitive_data_blocked"
    assert slm.received == [] and llm.received == []


async def test_per_detector_action_strongest_wins() -> None:
    slm, llm = two_backends()
    strategy = await build(privacy_config("redact", per_detector={"secret": "block"}), [slm, llm])
    with pytest.raises(InvalidRequestError):
        await answer(strategy, view(f"{EMAIL} and AKIAIOSFODNN7EXAMPLE"))
    await answer(strategy, view(f"just {EMAIL}"))
    assert EMAIL not in llm.seen_text()


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 64])
async def test_redact_round_trip_across_chunk_boundaries(chunk_size: int) -> None:
    slm = RecordingBackend("slm", local=True)
    llm = RecordingBackend("llm", local=False, chunk_size=chunk_size)
    strategy = await build(privacy_config("redact"), [slm, llm])
    question = f"Reply to {EMAIL} about card {CARD}; cc {EMAIL}."
    extra = {"metadata": {"note": f"customer {EMAIL}"}}
    text, ctx, chunks = await answer(strategy, view(question, params=SamplingParams(extra=extra)))
    sent = llm.seen_text()
    assert EMAIL not in sent and "1111" not in sent
    assert "<EMAIL_1>" in sent and "<CARD_1>" in sent and "<EMAIL_2>" not in sent  # same value, same name
    assert text == f"echo: {question}"  # every placeholder restored, whatever the chunking
    upstream_answer = f"echo: {llm.received[-1][-1].content}"
    # Token ids (and logprobs) of held-back chunks travel on with the text released later.
    assert sum(len(c.token_ids) for c in chunks) == len(range(0, len(upstream_answer), chunk_size))
    assert ctx.record.extra["privacy"] == {"detectors": ["email", "payment_card"], "action": "redact",
                                           "redacted": 2}


async def test_redact_skips_local_targets() -> None:
    slm, llm = two_backends()
    config = {"rules": [{"name": "home", "when": {"sensitive": True}, "target": "slm"}], "default": "llm",
              "privacy": {"action": "redact"}}
    strategy = await build(config, [slm, llm])
    text, ctx, _ = await answer(strategy, view(f"mail {EMAIL}"))
    assert ctx.record.rule == "home" and EMAIL in slm.seen_text() and text == f"echo: mail {EMAIL}"


def test_placeholders_avoid_names_already_in_the_conversation() -> None:
    redactor = Redactor(existing_text="the template says <EMAIL_1>")
    assert redactor.placeholder_for(EMAIL, "email") == "<EMAIL_2>"
    assert redactor.restore("<EMAIL_1> <EMAIL_2> <CARD_9>") == f"<EMAIL_1> {EMAIL} <CARD_9>"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["plain ", "<", ">", "<EMAIL_1>", "<CARD_1>", "<EMA", "_1", "x<y "]),
                max_size=12), st.integers(0, 2**32 - 1))
def test_stream_restorer_equals_whole_text_restore(pieces: list[str], seed: int) -> None:
    redactor = Redactor()
    redactor.placeholder_for(EMAIL, "email")
    redactor.placeholder_for(CARD, "payment_card")
    text = "".join(pieces)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
    restorer = StreamRestorer(redactor)
    out, last = [], 0
    for cut in [*cuts, len(text)]:
        out.append(restorer.feed(text[last:cut]))
        last = cut
    out.append(restorer.flush())
    assert "".join(out) == redactor.restore(text)


# --- end to end: a real gateway, SmolLM2 in-process, a recording fake cloud ---------------

@pytest.fixture(scope="module")
def privacy_gateway(
    model_cache: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any]]:
    from loadtests.fake_upstream import FakeConfig, serve_in_thread
    from tests.inprocess import InProcessGateway

    with serve_in_thread(FakeConfig(record=True, completion_tokens=4)) as (cloud_url, cloud):
        rules = {"type": "rules", "rules": [], "default": "llm"}
        policy = {
            "version": 1,
            "backends": {"slm": {"type": "local", "model": "smollm2"},
                         "llm": {"type": "openai", "base_url": f"{cloud_url}/v1", "model": "fake-model"}},
            "models": {"slm": {"type": "static", "backend": "slm"},
                       "auto": {**rules, "privacy": {"action": "local_only"}},
                       "auto-redact": {**rules, "privacy": {"action": "redact",
                                                            "per_detector": {"secret": "block"}}}},
        }
        server = InProcessGateway(policy, tmp_path_factory.mktemp("rules-e2e")).start()
        try:
            yield server, cloud
        finally:
            server.stop()


def _cloud_bytes(cloud: Any) -> bytes:
    import orjson

    return b"".join(orjson.dumps(entry) for entry in cloud.recorded)


def test_e2e_card_number_under_local_only_never_reaches_the_cloud(privacy_gateway: tuple[Any, Any]) -> None:
    from openai import OpenAI

    server, cloud = privacy_gateway
    client = OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=120)
    cloud.recorded.clear()
    card = "5555-5555-5555-4444"
    raw = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": f"Is {card} a valid card number?"}])
    completion = raw.parse()
    assert completion.model == "SmolLM2-135M-Instruct"  # the local model answered
    assert raw.headers["x-slm-gateway-route"] == "slm" and raw.headers["x-slm-gateway-rule"] == "default"
    assert raw.headers["x-slm-gateway-privacy"] == "local_only"
    assert cloud.recorded == []
    assert b"5555" not in _cloud_bytes(cloud)
    record = server.wait_records(1)[-1]
    assert record.extra["privacy"]["detectors"] == ["payment_card"] and "5555" not in repr(record.to_dict())
    # Control: the same path does reach the cloud when nothing is sensitive.
    clean = client.chat.completions.create(model="auto", max_tokens=4,
                                           messages=[{"role": "user", "content": "Is the sky blue?"}])
    assert clean.model == "fake-model" and len(cloud.recorded) == 1


def test_e2e_redact_sends_placeholders_and_block_refuses(privacy_gateway: tuple[Any, Any]) -> None:
    import openai

    server, cloud = privacy_gateway
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=120)
    cloud.recorded.clear()
    stream = client.chat.completions.create(
        model="auto-redact", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": f"Email {EMAIL} about IBAN GB82WEST12345698765432"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    sent = _cloud_bytes(cloud)
    assert b"<EMAIL_1>" in sent and b"<IBAN_1>" in sent
    assert EMAIL.encode() not in sent and b"WEST1234" not in sent
    with pytest.raises(openai.BadRequestError, match="secret"):
        client.chat.completions.create(model="auto-redact", max_tokens=4,
                                       messages=[{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE broke"}])
    assert len(cloud.recorded) == 1
