"""Which drafted tokens the target keeps: pure numpy functions over the scorer's rows.

Greedy: keep drafts while they equal the target's argmax; the first disagreement is replaced
by the target's own choice, and when every draft is kept the target's next choice is a free
"bonus" token. The output is then exactly the target's greedy output.

Sampling: the rule of Leviathan et al. (2023) / Chen et al. (2023). Draft token ``x`` drawn
from ``q`` is kept with probability ``min(1, p(x)/q(x))``; on rejection the replacement is
drawn from ``max(0, p - q)`` renormalised; after ``k`` kept drafts the bonus is drawn from
``p``. Each emitted token is then distributed exactly as ``p``, whatever ``q`` is. A drafter
without a distribution (prompt lookup) proposes deterministically: ``q`` is a point mass, so
``x`` is kept with probability ``p(x)`` and the residual is ``p`` without ``x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: int  # leading drafts kept
    next_token: int  # the correction (accepted < k) or the bonus (accepted == k)


def sampling_probs(logits: npt.ArrayLike, temperature: float, top_p: float) -> FloatArray:
    """Row-wise sampling distribution: softmax(logits / T), then the top-p nucleus renormalised
    (the smallest set of most likely tokens whose mass reaches ``top_p``; the first always stays)."""
    rows = np.atleast_2d(np.asarray(logits, dtype=np.float64)) / temperature
    rows = rows - rows.max(axis=-1, keepdims=True)
    probs: FloatArray = np.exp(rows)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        probs = np.stack([_nucleus(row, top_p) for row in probs])
    return probs


def _nucleus(row: FloatArray, top_p: float) -> FloatArray:
    order = np.argsort(-row, kind="stable")
    sorted_probs = row[order]
    before = np.cumsum(sorted_probs) - sorted_probs  # mass of the tokens ranked above each one
    kept = np.zeros_like(row)
    keep = order[before <= top_p]
    kept[keep] = row[keep]
    total = kept.sum()
    return kept / total if total > 0 else row


def draw(p: FloatArray, rng: np.random.Generator) -> int:
    """One token from the distribution ``p`` (need not be normalised)."""
    cumulative = np.cumsum(p)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, len(p) - 1)


def greedy_verdict(drafts: Sequence[int], target_argmax: Sequence[int]) -> Verdict:
    """``target_argmax[i]``: the target's choice after the context and ``drafts[:i]`` (k + 1 entries)."""
    for i, token in enumerate(drafts):
        if target_argmax[i] != token:
            return Verdict(i, int(target_argmax[i]))
    return Verdict(len(drafts), int(target_argmax[len(drafts)]))


def rejection_verdict(
    drafts: Sequence[int], draft_probs: FloatArray | None, target_probs: FloatArray, rng: np.random.Generator
) -> Verdict:
    """``draft_probs``: (k, V) the q each draft was drawn from, or None for point masses;
    ``target_probs``: (k + 1, V) the target's sampling distribution after each prefix."""
    for i, token in enumerate(drafts):
        p_row = target_probs[i]
        q = 1.0 if draft_probs is None else float(draft_probs[i, token])
        if q > 0.0 and rng.random() < min(1.0, float(p_row[token]) / q):
            continue
        if draft_probs is None:
            residual = p_row.copy()
            residual[token] = 0.0
        else:
            residual = np.maximum(p_row - draft_probs[i], 0.0)
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: any draw from p is exact
            residual = p_row
        return Verdict(i, draw(residual, rng))
    return Verdict(len(drafts), draw(target_probs[len(drafts)], rng))
