"""Speculative decoding's core: exact greedy output on the real SmolLM2, the sampling rule's
output distribution (chi-square on synthetic p/q), the remote verdicts, tokenizer checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from scipy.stats import chisquare

from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.local.config import LocalBackend
from gateway.core.strategy import GatewayResources
from policies.loader import PolicyError
from policies.strategies import SpeculativeDraft, SpeculativeStrategy
from routers.speculative.acceptance import DraftLength, greedy_verdict, rejection_verdict
from routers.speculative.decoding import Decoding, Speculator, target_greedy
from routers.speculative.forward import CausalLM
from routers.speculative.remote import PositionScores, RemoteScores, remote_greedy_verdict
from routers.speculative.strategy import Speculative

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "List three primary colors.",
    "Explain what a CPU cache is in one sentence.",
]


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
    ids: list[int] = tokenizer.encode(prompt, add_special_tokens=False)
    return ids


def speculate(target: CausalLM, draft: CausalLM, ids: list[int], eos: set[int], max_new: int,
              lengths: DraftLength, **decoding: Any) -> tuple[list[int], Speculator]:
    spec = Speculator(target, draft, ids, eos, Decoding(max_new, **decoding), lengths)
    out: list[int] = []
    while True:
        step = spec.step()
        out += step.tokens
        if step.finish:
            return out, spec


@pytest.mark.parametrize(("layers", "k", "adaptive"), [(24, 3, False), (28, 2, True)])
def test_greedy_self_speculation_equals_target_alone(smollm2: tuple[Any, Any], layers: int, k: int,
                                                     adaptive: bool) -> None:
    model, tokenizer = smollm2
    eos = {tokenizer.eos_token_id}
    target, draft = CausalLM(model), CausalLM(model, layers)
    accepted = 0
    for text in PROMPTS[:1] if adaptive else PROMPTS[1:2]:
        ids = chat_ids(tokenizer, text)
        reference = target_greedy(target, ids, 16, eos)
        out, spec = speculate(target, draft, ids, eos, 16, DraftLength(k, 6, adaptive))
        assert out == reference, (text, tokenizer.decode(out), tokenizer.decode(reference))
        stats = spec.stats.as_dict()
        assert stats["emitted"] == len(out)
        assert stats["target_passes"] == stats["rounds"] < len(out) + 1
        accepted += spec.stats.accepted
    assert accepted > 0  # some drafts were kept, so the cache roll-back paths ran


def test_full_model_as_draft_accepts_everything(smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    eos = {tokenizer.eos_token_id}
    ids = chat_ids(tokenizer, PROMPTS[1])
    out, spec = speculate(CausalLM(model), CausalLM(model), ids, eos, 15, DraftLength(4, 4, False))
    assert out == target_greedy(CausalLM(model), ids, 15, eos)
    assert spec.stats.accepted == spec.stats.drafted
    assert spec.stats.target_passes <= 0.25 * len(out)  # 5 tokens per pass (4 drafts + bonus)


def test_sampling_is_deterministic_with_a_seed(smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    ids = chat_ids(tokenizer, PROMPTS[2])
    runs = [speculate(CausalLM(model), CausalLM(model, 26), ids, {tokenizer.eos_token_id}, 6,
                      DraftLength(3, 3, False), temperature=0.8, seed=7)[0] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


# --- the sampling rule: each emitted token is distributed as p, whatever q is -------------

P = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
Q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)


def first_two_tokens(trials: int, rule: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Simulate rounds of k=2 drafts from Q; return first tokens, and (t0, t1) pairs when 2+ emitted."""
    gen = torch.Generator().manual_seed(1234)
    firsts, pairs = [], []
    for _ in range(trials):
        drafts = [int(torch.multinomial(Q[i], 1, generator=gen)) for i in range(2)]
        # The wrong rule keeps every draft: its output follows q, and the test must notice.
        verdict = rejection_verdict(drafts, Q, P, gen) if rule == "leviathan" else greedy_verdict(drafts, [*drafts, 0])
        tokens = [*drafts[: verdict.accepted], verdict.next_token]
        firsts.append(tokens[0])
        if len(tokens) >= 2:
            pairs.append((tokens[0], tokens[1]))
    return firsts, pairs


def test_rejection_sampling_matches_target_distribution() -> None:
    firsts, pairs = first_two_tokens(20000, "leviathan")
    observed = torch.bincount(torch.tensor(firsts), minlength=4).double()
    assert chisquare(observed.numpy(), (P[0] * len(firsts)).numpy()).pvalue > 0.001
    # The second token is independent of the first in this synthetic case: distributed as P[1].
    seconds = torch.bincount(torch.tensor([b for _, b in pairs]), minlength=4).double()
    assert chisquare(seconds.numpy(), (P[1] * len(pairs)).numpy()).pvalue > 0.001


def test_chi_square_rejects_a_wrong_acceptance_rule() -> None:
    firsts, _ = first_two_tokens(5000, "always-accept")
    observed = torch.bincount(torch.tensor(firsts), minlength=4).double()
    assert chisquare(observed.numpy(), (P[0] * len(firsts)).numpy()).pvalue < 1e-6


# --- remote verdicts -----------------------------------------------------------------------


def test_remote_greedy_verdict_uses_ranks_and_bonus() -> None:
    def pos(token: int, rank: int, top: int) -> PositionScores:
        return PositionScores(token, rank, {token: -1.0, top: -0.5} if top != token else {token: -0.5})

    kept = RemoteScores([pos(5, 1, 5), pos(6, 1, 6)], generated_token=9, prompt_tokens=10, completion_tokens=1)
    assert remote_greedy_verdict([5, 6], kept) == greedy_verdict([5, 6], [5, 6, 9])
    wrong = RemoteScores([pos(5, 1, 5), pos(6, 2, 7)], generated_token=9, prompt_tokens=10, completion_tokens=1)
    verdict = remote_greedy_verdict([5, 6], wrong)
    assert verdict is not None and (verdict.accepted, verdict.next_token) == (1, 7)
    unknown_bonus = RemoteScores([pos(5, 1, 5)], generated_token=None, prompt_tokens=3, completion_tokens=1)
    assert remote_greedy_verdict([5], unknown_bonus) is None


# --- policy load ---------------------------------------------------------------------------


async def test_tokenizer_mismatch_is_rejected_at_policy_load(smollm2: tuple[Any, Any]) -> None:
    import copy

    model, tokenizer = smollm2
    target = LocalModelBackend("target", LocalBackend(type="local"))
    target.model, target.tokenizer = model, tokenizer
    draft = LocalModelBackend("draft", LocalBackend(type="local"))
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<an-extra-token>"])  # a different vocabulary
    draft.model, draft.tokenizer = model, other
    resources = GatewayResources(backends={"target": target, "draft": draft}, prices={})
    config = SpeculativeStrategy(type="speculative", target="target", draft=SpeculativeDraft(backend="draft"))
    with pytest.raises(PolicyError, match="do not share a tokenizer"):
        await Speculative("spec", config, resources).start()
    same = SpeculativeStrategy(type="speculative", target="target", draft=SpeculativeDraft(self_layers=4))
    await Speculative("spec", same, resources).start()  # one model: accepted
