"""Speculative decoding's logic on a scripted TokenScorer: exact greedy output, the sampling
rule's output distribution (chi-square, seeded), the adaptive controller's choices from
scripted costs, accounting, and the policy errors (the scripted parts:
tests/speculative_support.py). The real-model tests are in test_speculative_llamacpp.py,
test_speculative_gateway.py and test_speculative_qwen.py."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from scipy.stats import chisquare

from gateway.core.config import Price
from policies.loader import PolicyError, parse_policy
from routers.speculative.acceptance import greedy_verdict, rejection_verdict, sampling_probs
from routers.speculative.config import AdaptiveSettings, SpeculativeStrategy
from routers.speculative.controller import Controller, Costs, expected_tokens
from routers.speculative.drafters import ModelDrafter, NgramDrafter
from routers.speculative.generation import Decoding, Generation
from routers.speculative.ngram import prompt_lookup
from routers.speculative.rounds import speculative_rounds
from routers.speculative.verifiers import LocalVerifier
from tests.speculative_support import (
    DRAFT,
    PROMPT,
    TARGET,
    ScriptedScorer,
    complete,
    strategy,
)

# --- greedy: exactly the target alone ------------------------------------------------------


@pytest.mark.parametrize("draft", [{"backend": "draft"}, {"ngram": {"max_n": 3, "k": 6}},
                                   [{"ngram": {}}, {"backend": "draft"}]])
async def test_greedy_output_is_the_target_alone(draft: Any) -> None:
    spec = strategy(draft, adaptive_k=False, k=4)
    await spec.start()
    out, record = await complete(spec, PROMPT, 48)
    assert out == TARGET.greedy(PROMPT, 48)
    stats = record.extra["speculative"]
    assert stats["emitted"] == len(out) and stats["mode"] == "local"
    assert stats["accepted"] > 0  # drafts were kept: the roll-back and bonus paths ran
    assert stats["target_passes"] < len(out)


async def test_model_drafts_are_rejected_and_corrected() -> None:
    spec = strategy({"backend": "draft"}, adaptive_k=False, k=3)
    await spec.start()
    _, record = await complete(spec, PROMPT, 40)
    per = record.extra["speculative"]["drafters"]["draft"]
    assert per["rejections"] > 0 and 0 < per["accepted"] < per["drafted"]


async def test_calls_are_recorded_and_priced() -> None:
    spec = strategy({"backend": "draft"}, adaptive_k=False, k=3)
    await spec.start()
    out, record = await complete(spec, PROMPT, 20)
    verify, draft = (next(c for c in record.calls if c.purpose == p) for p in ("verify", "draft"))
    assert verify.completion_tokens == len(out) and verify.prompt_tokens == len(PROMPT)
    assert verify.cost_usd == Price(input_per_1m=1.0, output_per_1m=2.0).cost(len(PROMPT), len(out))
    assert draft.completion_tokens == record.extra["speculative"]["drafted"] > 0
    stats = record.extra["speculative"]
    # Calibrated at 1, 2, 4, 8; refined at the k the rounds used (3).
    assert set(stats["costs"]["verify_cost"]) == {"1", "2", "3", "4", "8"}
    assert stats["roofline"]["draft"]["speedup"] >= 1.0


# --- sampling: every emitted token is distributed as the target's ------------------------


def first_two(draft: str, trials: int, temperature: float) -> tuple[list[int], list[int], int]:
    """Seeded runs of 2 tokens with one draft each: first tokens, second tokens, drafts kept."""
    context = [7, 9, 11, 7, 9]  # n-gram: "7 9" occurred before, so "11" is proposed (target p = 0.38)

    async def run() -> tuple[list[int], list[int], int]:
        controller = Controller(AdaptiveSettings(), 2, 2, [draft])
        controller.costs = Costs(1.0, {1: 1.0, 2: 1.0})
        drafter = NgramDrafter(SpeculativeStrategy.model_validate(
            {"type": "speculative", "target": "t", "draft": {"ngram": {}}}).drafters()[0].ngram)  # type: ignore[union-attr]
        drafters = {"ngram": drafter, "draft": ModelDrafter("draft", ScriptedScorer(DRAFT))}
        verifier = LocalVerifier(ScriptedScorer(TARGET))
        rng = np.random.default_rng(2024)
        firsts, seconds, kept = [], [], 0
        for _ in range(trials):
            generation = Generation(context, frozenset(), Decoding(2, temperature=temperature))
            tokens = [t async for step in speculative_rounds(generation, verifier, [drafters[draft]], controller, rng)
                      for t in step.tokens]
            firsts.append(tokens[0])
            seconds.append(tokens[1])
            kept += generation.stats.accepted
        return firsts, seconds, kept

    return asyncio.run(run())


def chi_square_pvalue(samples: list[int], p: np.ndarray) -> float:
    """Goodness of fit of ``samples`` to ``p``; tokens expected fewer than 5 times share one bin."""
    observed, expected = np.bincount(samples, minlength=len(p)), p * len(samples)
    keep = expected >= 5
    if (~keep).any():
        return float(chisquare(np.append(observed[keep], observed[~keep].sum()),
                               np.append(expected[keep], expected[~keep].sum())).pvalue)
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("draft", ["draft", "ngram"])
def test_sampled_tokens_follow_the_target_distribution(draft: str) -> None:
    temperature = 1.3
    firsts, seconds, kept = first_two(draft, 3000, temperature)
    assert 300 < kept < 2700  # drafts were both kept and rejected
    context = [7, 9, 11, 7, 9]
    assert chi_square_pvalue(firsts, sampling_probs(TARGET.logits(context), temperature, 1.0)[0]) > 1e-3
    modal = int(np.argmax(np.bincount(firsts)))  # the second token, given the most frequent first one
    after = [b for a, b in zip(firsts, seconds, strict=True) if a == modal]
    p1 = sampling_probs(TARGET.logits([*context, modal]), temperature, 1.0)[0]
    assert chi_square_pvalue(after, p1) > 1e-3


P = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
Q = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])


def first_tokens(rule: str, trials: int) -> np.ndarray:
    """First emitted token of rounds of k = 2 drafts from Q (or the fixed drafts [1, 2], q a point mass)."""
    rng = np.random.default_rng(7)
    firsts = []
    for _ in range(trials):
        drafts = [1, 2] if rule == "point" else [int(rng.choice(4, p=Q[i])) for i in range(2)]
        if rule == "keep-all":  # a wrong rule: keeps every draft, so its output follows q
            verdict = greedy_verdict(drafts, [*drafts, 0])
        else:
            verdict = rejection_verdict(drafts, None if rule == "point" else Q, P, rng)
        firsts.append([*drafts[: verdict.accepted], verdict.next_token][0])
    return np.bincount(firsts, minlength=4)


@pytest.mark.parametrize("rule", ["leviathan", "point"])
def test_the_acceptance_rule_keeps_the_target_distribution(rule: str) -> None:
    assert chisquare(first_tokens(rule, 4000), P[0] * 4000).pvalue > 1e-3


def test_the_chi_square_check_catches_a_wrong_rule() -> None:
    assert chisquare(first_tokens("keep-all", 4000), P[0] * 4000).pvalue < 1e-6


def test_sampling_is_reproducible_with_a_seed() -> None:
    async def run() -> list[list[int]]:
        spec = strategy({"backend": "draft"}, adaptive_k=False, k=3)
        await spec.start()
        return [(await complete(spec, PROMPT, 16, temperature=0.9, seed=11))[0] for _ in range(2)]

    first, second = asyncio.run(run())
    assert first == second and first  # (an EOS may end a sampled answer early)


# --- the adaptive controller -------------------------------------------------------------


def test_controller_switches_speculation_off_when_costs_say_it_loses() -> None:
    controller = Controller(AdaptiveSettings(probe_interval=16), 8, None, ["small", "ngram"])
    # Compute-bound target (each row a decode step) and a draft at half a step: never pays, even
    # with every draft kept, so it is not even probed (a probe would only cost).
    controller.costs = Costs(0.04, {k: 1.0 + k for k in (1, 2, 4, 8)}, {"small": 0.5})
    for seen in (0, 16, 1000):
        assert controller.choose([("small", 8), ("ngram", 3)], 100, seen).drafter is None
    assert not controller.could_pay("small") and not controller.could_pay("ngram")
    # Verifying costs half a step per draft: a perfect drafter would pay, a poor one does not.
    controller.costs = Costs(0.04, {k: 1.0 + 0.5 * k for k in (1, 2, 4, 8)}, {"small": 0.5})
    for _ in range(20):
        controller.observe("ngram", 4, 0)
    assert controller.could_pay("ngram") and not controller.could_pay("small")
    assert controller.choose([("small", 8), ("ngram", 3)], 100, 0).drafter is None
    probe = controller.choose([("small", 8), ("ngram", 3)], 100, 16)  # after probe_interval tokens: try again
    assert probe.probe and probe.drafter == "ngram" and probe.k >= 1
    assert controller.choose([("ngram", 3)], 100, 16).drafter is None  # a losing probe backs off: 32 now
    assert controller.choose([("ngram", 3)], 100, 32).probe
    # Memory-bound (verify(k) ~ one step) with good acceptance: speculate with long drafts.
    controller.costs = Costs(0.04, {1: 1.02, 2: 1.04, 4: 1.08, 8: 1.16}, {"small": 0.05})
    for _ in range(20):
        controller.observe("small", 8, 7)
    choice = controller.choose([("small", 8)], 100, 0)
    assert choice.drafter == "small" and choice.k >= 6 and choice.expected_speedup > 1.8
    assert controller.choose([("small", 8)], 2, 0).k == 1  # never more drafts than tokens left


def test_costs_follow_what_the_rounds_measure() -> None:
    """A target that got slower to verify (load, a longer context) switches speculation off."""
    controller = Controller(AdaptiveSettings(), 4, None, ["small"])
    controller.costs = Costs(0.05, {1: 1.05, 2: 1.1, 4: 1.2}, {"small": 0.1})
    for _ in range(20):
        controller.observe("small", 4, 3)
    assert controller.choose([("small", 4)], 100, 0).drafter == "small"
    for _ in range(15):  # rounds now take 5 decode steps to verify 4 drafts
        controller.observe_round("small", 4, 0.005, 5 * 0.05)
        controller.observe_alone(8, 8 * 0.05)
    assert controller.costs.c(4) == pytest.approx(5.0, rel=0.05)
    assert controller.choose([("small", 4)], 100, 0).drafter is None


def test_expected_tokens_and_interpolated_costs() -> None:
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    costs = Costs(0.01, {1: 1.5, 2: 2.0, 4: 3.0})
    assert costs.c(0) == 1.0 and costs.c(3) == pytest.approx(2.5) and costs.c(6) == pytest.approx(4.0)


@pytest.mark.parametrize("streams", [False, True])
async def test_adaptive_strategy_decodes_alone_on_a_compute_bound_target(streams: bool) -> None:
    # Scripted costs: every new token is a full step for target and draft alike. With
    # ``streams`` the target decodes alone through its own generation, a stretch per call.
    # 20 ms steps: a 5 ms sleep overshot by a busy machine's scheduling read c(4) as 2.5, not 5.
    target = ScriptedScorer(TARGET, step_seconds=0.02, row_cost=1.0)
    draft = ScriptedScorer(DRAFT, step_seconds=0.02, row_cost=1.0)
    spec = strategy({"backend": "draft"}, target_scorer=target, draft_scorer=draft, streams=streams,
                    adaptive={"probe_interval": 16, "calibration_repeats": 1})
    await spec.start()
    out, record = await complete(spec, PROMPT, 40)
    assert out == TARGET.greedy(PROMPT, 40)
    stats = record.extra["speculative"]
    assert stats["costs"]["verify_cost"]["4"] > 3.0  # measured, not assumed
    # A draft at a full step can never pay here, whatever its acceptance: not even probed, and
    # with ``streams`` the whole answer is one call of the target's own generation.
    assert stats["alone_tokens"] == 40 and stats["rounds"] == 0
    calls = spec.resources.backends["target"].stream_calls  # type: ignore[attr-defined]
    assert (calls == 1) if streams else (calls == 0)


async def test_adaptive_strategy_speculates_on_a_memory_bound_target() -> None:
    # Long steps and a median of 3: the measured costs must stay memory-bound on a busy machine
    # (5 rows ~ 1.08 steps; one repetition once measured 1.53 at load 11).
    target = ScriptedScorer(TARGET, step_seconds=0.05, row_cost=0.02)
    spec = strategy({"ngram": {"k": 8}}, target_scorer=target, adaptive={"calibration_repeats": 3})
    await spec.start()
    prompt = PROMPT * 3
    out, record = await complete(spec, prompt, 48)
    assert out == TARGET.greedy(prompt, 48)
    stats = record.extra["speculative"]
    assert stats["rounds"] > 0 and stats["costs"]["verify_cost"]["4"] < 1.5
    assert stats["drafters"]["ngram"]["accepted"] > 0


# --- prompt lookup -------------------------------------------------------------------------


def test_prompt_lookup_prefers_long_recent_matches() -> None:
    assert prompt_lookup([1, 2, 3, 4, 5, 9, 2, 3], 1, 3, 4) == [4, 5, 9, 2]
    assert prompt_lookup([7, 1, 2, 8, 1, 2, 9, 5, 1, 2], 1, 2, 2) == [9, 5]  # the latest "1 2"
    assert prompt_lookup([1, 2, 3], 1, 3, 4) == [] and prompt_lookup([1, 1], 1, 3, 0) == []


# --- policy errors -------------------------------------------------------------------------


async def test_vocabulary_mismatch_is_a_policy_error() -> None:
    spec = strategy({"backend": "draft"}, draft_scorer=ScriptedScorer(DRAFT, vocabulary_id="another-tokenizer"))
    with pytest.raises(PolicyError, match="do not share a vocabulary"):
        await spec.start()


async def test_drafter_without_a_scorer_is_a_policy_error() -> None:
    spec = strategy({"backend": "draft"})
    spec.resources.backends["draft"].scorer = None  # type: ignore[attr-defined]
    with pytest.raises(PolicyError, match="has no in-process TokenScorer"):
        await spec.start()


async def test_target_that_cannot_verify_is_a_policy_error() -> None:
    spec = strategy({"ngram": {}}, mode="verify")
    spec.resources.backends["target"].scorer = None  # type: ignore[attr-defined]
    with pytest.raises(PolicyError, match="cannot verify drafts"):
        await spec.start()


def test_self_layers_drafts_are_gone_with_a_clear_message() -> None:
    policy = {"version": 1, "backends": {"slm": {"type": "local"}},
              "models": {"s": {"type": "speculative", "target": "slm", "draft": {"self_layers": 24}}}}
    with pytest.raises(PolicyError, match="self_layers was removed"):
        parse_policy(policy)
