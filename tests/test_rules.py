"""The ``rules`` strategy: rule order, each condition, token-count boundaries, model targets.

Unit tests drive the strategy with small in-test backends that record what they receive
(tests/rules_support.py); the privacy guard has its own module (test_privacy_guard.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from policies.loader import PolicyError, load_policy
from routers.rules.config import RulesStrategy
from tests.rules_support import EMAIL, REPO, RecordingBackend, answer, build, two_backends, view

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
