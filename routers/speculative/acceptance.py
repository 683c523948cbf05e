"""Which drafted tokens the target keeps (pure tensor functions), and how many to draft next.

Greedy: keep drafts while they equal the target's argmax; the first disagreement is replaced
by the target's own choice, and when every draft is kept the target's next choice is a free
"bonus" token. The output is then exactly the target's greedy output.

Sampling: the rule of Leviathan et al. (2023) / Chen et al. (2023). Draft token ``x`` drawn
from ``q`` is kept with probability ``min(1, p(x)/q(x))``; on rejection the replacement is
drawn from ``max(0, p - q)`` renormalised; after ``k`` kept drafts the bonus is drawn from
``p``. Each emitted token is then distributed exactly as ``p``, whatever ``q`` is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: int  # leading drafts kept
    next_token: int  # the correction (accepted < k) or the bonus (accepted == k)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Row-wise sampling distribution, the same transform the local engine samples from."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        sorted_probs = torch.where(cumulative - sorted_probs > top_p, 0.0, sorted_probs)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def greedy_verdict(drafts: list[int], target_argmax: list[int]) -> Verdict:
    """``target_argmax[i]``: the target's choice after the context and ``drafts[:i]`` (k + 1 entries)."""
    for i, token in enumerate(drafts):
        if target_argmax[i] != token:
            return Verdict(i, target_argmax[i])
    return Verdict(len(drafts), target_argmax[len(drafts)])


def rejection_verdict(
    drafts: list[int], draft_probs: torch.Tensor, target_probs: torch.Tensor, generator: torch.Generator | None
) -> Verdict:
    """``draft_probs``: (k, V) the q each draft was drawn from; ``target_probs``: (k + 1, V)."""
    for i, token in enumerate(drafts):
        p, q = float(target_probs[i, token]), float(draft_probs[i, token])
        if q > 0.0 and float(torch.rand((), generator=generator)) < min(1.0, p / q):
            continue
        residual = torch.clamp(target_probs[i] - draft_probs[i], min=0.0)
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: any draw from p is exact
            residual = target_probs[i]
        return Verdict(i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
    bonus = int(torch.multinomial(target_probs[len(drafts)], 1, generator=generator))
    return Verdict(len(drafts), bonus)


class DraftLength:
    """Chooses k each round to maximise expected verified tokens per second.

    Per-token acceptance ``a`` is estimated from decayed counts (kept drafts vs. rejections).
    With k drafts a round yields ``(1 - a**(k+1)) / (1 - a)`` tokens and costs
    ``k * draft_step + verify`` seconds (both measured, decayed averages); k is the best of
    ``1..max_k``. Without ``adaptive`` it stays fixed.
    """

    DECAY = 0.8

    def __init__(self, k: int, max_k: int, adaptive: bool) -> None:
        self.k = k
        self.max_k = max(max_k, k)
        self.adaptive = adaptive
        self._kept = 2.0  # prior: acceptance 2/3
        self._rejected = 1.0
        self._draft_step: float | None = None
        self._verify: float | None = None

    @property
    def acceptance(self) -> float:
        return self._kept / (self._kept + self._rejected)

    def observe(self, drafted: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        self._kept = self._kept * self.DECAY + accepted
        self._rejected = self._rejected * self.DECAY + (1 if accepted < drafted else 0)
        if drafted:
            self._draft_step = _decayed(self._draft_step, draft_seconds / drafted, self.DECAY)
        self._verify = _decayed(self._verify, verify_seconds, self.DECAY)

    def next(self, remaining: int) -> int:
        """Drafts for the next round; ``remaining`` output tokens are still allowed."""
        cap = max(1, remaining - 1)  # the verify pass adds one token of its own
        if not self.adaptive or self._draft_step is None or not self._verify:
            return min(self.k, cap)
        a = min(self.acceptance, 0.999)
        best_k, best_rate = 1, -math.inf
        for k in range(1, self.max_k + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (k * self._draft_step + self._verify)
            if rate > best_rate:
                best_k, best_rate = k, rate
        self.k = best_k
        return min(best_k, cap)


def _decayed(previous: float | None, value: float, decay: float) -> float:
    return value if previous is None else previous * decay + value * (1 - decay)
