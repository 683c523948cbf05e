"""Finite-sample bounds on the kept answers' disagreement rate, and the threshold they certify.

**Setting.** A label is a pair (s, d): the tier's raw confidence score of one request and d = 1
when the judge finds the tier's answer disagreeing with the next tier's. Labels are drawn
uniformly from the tier's decided traffic (every request the threshold decides is labelled with
the same probability, kept or escalated: :mod:`routers.cascade.selfcal.sampler`), so they are an
i.i.d. sample of (S, D) as long as traffic is exchangeable. A threshold t keeps the answers with
s >= t; its risk is the disagreement rate of what it keeps, R(t) = P(D = 1 | S >= t).

**Clopper–Pearson.** Among the n labels with s >= t, the number k that disagree is, given n,
Binomial(n, R(t)). The one-sided Clopper–Pearson upper bound at confidence 1 - δ,
U(k, n) = Beta⁻¹(1 - δ; k + 1, n - k) (U = 1 when k = n), satisfies P(R(t) <= U) >= 1 - δ
for every R(t) and n: it is exact (no normal approximation), so it holds with 30 labels as well
as with 30 000. Equivalently, U <= α exactly when the binomial tail P(Bin(n, α) <= k) <= δ: a
valid p-value for the null hypothesis H_t: R(t) > α ("t is unsafe").

**Which threshold (Learn then Test, fixed-sequence testing).** Testing many thresholds and
keeping the loosest whose bound is under α would pick the luckiest of many tests: the bound
would no longer hold for the one chosen. Fixed-sequence testing fixes that without any
multiplicity correction: order the candidates from strictest (keeps least) to loosest, test each
at level δ, and stop at the first one whose bound exceeds α; the loosest threshold passed is
chosen. Every passed threshold is certified simultaneously: to pass any unsafe threshold, the
procedure must first pass the first unsafe one in the order — one test at level δ — so
P(some certified t has R(t) > α) <= δ (the family-wise error rate), whatever the shape of R.
(Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test", 2021.)

**The candidates** are the scores at kept shares 1/N, 2/N, ..., 1 of the labels (N =
``candidates``), from the first one that keeps enough labels for its test to have a fair chance:
:func:`start_labels`, the fewest labels whose bound passes with an observed rate of half the
target (153 for α = δ = 0.05). A stricter candidate keeps so few labels that one chance
disagreement fails it (with 79 labels and one disagreement U = 0.059 > 0.05), and its failure
would end the sequence at once: the threshold would then be "escalate everything" by the luck
of the first test. Leaving it out costs nothing in validity — the grid is built from the scores
alone, never from the verdicts — only the ability to certify a threshold that keeps fewer
labels than that (a window with fewer labels than the start tests one candidate: keep them
all). Given the scores, the verdicts are independent Bernoulli(1 - P(agree | s)) draws and the
binomial tail above remains a valid (if conservative) p-value for their sum (Hoeffding 1956),
so the guarantee also holds for the mean disagreement probability over the kept labels.

The default grid is coarse (N = 20: steps of 5 % kept share) because a coarse grid is the more
powerful one: consecutive fine-grained tests add a few labels at a time, and one unlucky
disagreement right after a pass stops the sequence (in the simulation's world,
tests/selfcal_support.py, N = 20 kept about as much as N = 100 — 0.39 vs 0.39 of traffic on
2 000 labels, 0.44 vs 0.46 on 4 000 — and picked an unsafe threshold in 0 vs 2-3 % of 150 draws).

**Assumptions**, stated in docs/cascade.md: exchangeable traffic over the window (the drift
alarm is the guard against the opposite), uniform labelling (the sampler's job), and the judge as
the definition of quality — the bound is on disagreement *as the judge sees it*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.core.selfcal import ESCALATE_ALL

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def cp_upper(disagree: int, kept: int, confidence: float) -> float:
    """One-sided Clopper–Pearson upper bound on a binomial rate: ``disagree`` of ``kept``."""
    if kept <= 0 or disagree >= kept:
        return 1.0
    from scipy.stats import beta  # scipy only when a tier recalibrates (off the request path)

    return float(beta.ppf(confidence, disagree + 1, kept - disagree))


def cp_lower(disagree: int, kept: int, confidence: float) -> float:
    """One-sided Clopper–Pearson lower bound: the rate is at least this with ``confidence``."""
    if kept <= 0 or disagree <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - confidence, disagree, kept - disagree + 1))


def min_certifiable(target: float, confidence: float) -> int:
    """The fewest kept labels whose bound can be <= ``target`` (all of them agreeing)."""
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target)))
    while cp_upper(0, n, confidence) > target:  # guard the float rounding of the closed form
        n += 1
    return n


START_RATE = 0.5  # the first candidate must be able to pass with an observed rate of half the target


def start_labels(target: float, confidence: float) -> int:
    """The fewest kept labels whose bound passes when ``START_RATE * target`` of them disagree:
    where the fixed sequence starts (see the module docstring). A linear scan (the floor makes
    the condition not quite monotone in n): ~150 bound evaluations for α = 0.05, in the refit's thread."""
    n = min_certifiable(target, confidence)
    while cp_upper(math.floor(START_RATE * target * n), n, confidence) > target:
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class ThresholdTest:
    """One threshold, tested on the labels: what it keeps and the bound on their disagreement."""

    threshold: float
    kept: int  # labels with score >= threshold
    disagree: int  # of those, the ones the judge found disagreeing
    bound: float  # Clopper–Pearson upper bound on the kept answers' disagreement rate
    total: int  # labels tested on

    @property
    def estimate(self) -> float:
        return self.disagree / self.kept if self.kept else 0.0

    @property
    def kept_share(self) -> float:
        return self.kept / self.total if self.total else 0.0


def bound_at(scores: FloatArray, disagree: BoolArray, threshold: float, confidence: float) -> ThresholdTest:
    """The bound at one threshold (``scores`` raw, ``disagree`` booleans, same length)."""
    kept = scores >= threshold
    n, k = int(kept.sum()), int(disagree[kept].sum())
    return ThresholdTest(threshold, n, k, cp_upper(k, n, confidence), len(scores))


def candidate_thresholds(scores: FloatArray, candidates: int, min_kept: int) -> list[float]:
    """Thresholds at kept shares 1/N .. 1 of the finite scores, strictest first, each keeping at
    least ``min_kept`` labels (ties keep more: a threshold keeps every score equal to it)."""
    finite = np.sort(scores[np.isfinite(scores)])[::-1]
    if len(finite) == 0:
        return []
    out: list[float] = []
    for step in range(1, candidates + 1):
        rank = math.ceil(step * len(finite) / candidates)  # the rank-th highest score
        threshold = float(finite[rank - 1])
        if (out and threshold >= out[-1]) or int((finite >= threshold).sum()) < min_kept:
            continue
        out.append(threshold)
    return out


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of the fixed-sequence test over the candidates."""

    threshold: float  # the loosest certified threshold, or ESCALATE_ALL when none is
    chosen: ThresholdTest | None  # its test (None: nothing certified)
    tested: tuple[ThresholdTest, ...]  # the sequence as run, strictest first; the last failed unless all passed


def select_threshold(scores: Sequence[float] | FloatArray, disagree: Sequence[bool] | BoolArray, target: float,
                     confidence: float, candidates: int, start: int | None = None) -> Selection:
    """Learn then Test: the loosest threshold whose kept answers' disagreement rate is at most
    ``target`` with probability ``confidence`` (family-wise, over every threshold passed).
    ``start``: :func:`start_labels` of this target and confidence, when the caller has it."""
    x = np.asarray(scores, dtype=float)
    d = np.asarray(disagree, dtype=bool)
    tested: list[ThresholdTest] = []
    chosen: ThresholdTest | None = None
    first = start if start is not None else start_labels(target, confidence)
    # Fewer labels than that in all: the sequence is the one candidate keeping them all.
    first = max(1, min(first, int(np.isfinite(x).sum())))
    for threshold in candidate_thresholds(x, candidates, first):
        result = bound_at(x, d, threshold, confidence)
        tested.append(result)
        if result.bound > target:
            break  # the first failure ends the sequence: what follows is never tested
        chosen = result
    return Selection(chosen.threshold if chosen else ESCALATE_ALL, chosen, tuple(tested))
