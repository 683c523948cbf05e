"""A buffer-mode cascade replayed from each tier's cached answers, and its figures with bootstrap
intervals.

In ``buffer`` mode with greedy decoding (and no early exit or router stage) the cascade's answer
is exactly: the small model's answer when its calibrated score clears the threshold and its code is
well-formed, else the large model's answer; its tokens are the small attempt's plus, when
escalated, the large model's. So one generation per model serves the whole threshold sweep,
calibration on one part of the data and evaluation on another, and every combined policy.
``slm-gateway eval --cascade live`` runs the real strategy instead (and costs a third pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.config import Price
from routers.cascade.calibration import apply_calibration
from routers.cascade.config import CascadeTier
from routers.cascade.offline.answers import BackendAnswer
from routers.cascade.scorers import SCORERS

STRUCTURAL_FAIL = -1e9  # the escalation order puts malformed code first, before any score


@dataclass(frozen=True, slots=True)
class CascadeAnswer:
    correct: bool
    escalated: bool
    cost_usd: float
    latency_s: float
    ttft_s: float | None
    confidence: float | None


def confidences(tier: CascadeTier, answers: Sequence[BackendAnswer]) -> list[float]:
    """The tier's calibrated score per answer; a structural failure (``structural: python``, or
    ``python_examples``) sorts below every score."""
    out = []
    for answer in answers:
        if answer.fails(tier.structural) is not None:
            out.append(STRUCTURAL_FAIL)
        else:
            out.append(apply_calibration(tier.calibration, SCORERS[tier.scorer](answer.logprobs)))
    return out


def replay(tier: CascadeTier, small: Sequence[BackendAnswer], large: Sequence[BackendAnswer],
           small_price: Price, large_price: Price) -> list[CascadeAnswer]:
    assert tier.threshold is not None
    out = []
    for confidence, s, big in zip(confidences(tier, small), small, large, strict=True):
        cost = small_price.cost(s.prompt_tokens, s.completion_tokens)
        if confidence >= tier.threshold:
            out.append(CascadeAnswer(s.correct, False, cost, s.latency_s, s.ttft_s, confidence))
        else:
            cost += large_price.cost(big.prompt_tokens, big.completion_tokens)
            ttft = None if big.ttft_s is None else s.latency_s + big.ttft_s
            out.append(CascadeAnswer(big.correct, True, cost, s.latency_s + big.latency_s, ttft, confidence))
    return out


def sweep(order: npt.ArrayLike, small_ok: npt.ArrayLike, large_ok: npt.ArrayLike
          ) -> tuple[np.ndarray, np.ndarray]:
    """Quality at every share escalated k/n, least confident first (ties broken by position)."""
    ranked = np.argsort(np.asarray(order, dtype=float), kind="stable")
    weak, strong = np.asarray(small_ok, dtype=float), np.asarray(large_ok, dtype=float)
    n = len(ranked)
    gain = np.concatenate([[0.0], np.cumsum((strong - weak)[ranked])])
    return np.arange(n + 1) / n, (weak.sum() + gain) / n


def curve_figures(order: npt.ArrayLike, small_ok: npt.ArrayLike, large_ok: npt.ArrayLike
                  ) -> dict[str, float | None]:
    """APGR (area under the gap recovered), escalation for 50/80/95 % of the gap, and for 95 % of
    the large model's accuracy (None when the large model is not better)."""
    share, quality = sweep(order, small_ok, large_ok)
    weak, strong = quality[0], quality[-1]
    out: dict[str, float | None] = {"apgr": None, "cpt50": None, "cpt80": None, "cpt95": None,
                                    "escalation_for_95pct_large": None}
    if strong > 0:
        reached = np.nonzero(quality >= 0.95 * strong - 1e-12)[0]
        out["escalation_for_95pct_large"] = float(share[reached[0]])
    if strong <= weak:
        return out
    pgr = (quality - weak) / (strong - weak)
    out["apgr"] = float(np.trapezoid(pgr, share))
    for name, target in (("cpt50", 0.5), ("cpt80", 0.8), ("cpt95", 0.95)):
        out[name] = float(share[np.nonzero(pgr >= target - 1e-12)[0][0]])
    return out


def bootstrap(statistic: Callable[[np.ndarray], dict[str, float | None]], n: int, rounds: int = 1000,
              seed: int = 0) -> dict[str, list[float] | None]:
    """95 % percentile intervals of each figure ``statistic`` returns, resampling the n items with
    replacement (resamples where a figure is undefined are left out of its interval)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        for key, value in statistic(rng.integers(0, n, n)).items():
            if value is not None:
                draws.setdefault(key, []).append(value)
    keys = statistic(np.arange(n)).keys()
    return {key: ([round(float(v), 4) for v in np.percentile(draws[key], [2.5, 97.5])]
                  if len(draws.get(key, [])) >= rounds // 2 else None) for key in keys}


def cascade_figures(order: npt.ArrayLike, small_ok: npt.ArrayLike, large_ok: npt.ArrayLike,
                    cascade: Sequence[CascadeAnswer], rounds: int = 1000) -> dict[str, Any]:
    """Point figures and their bootstrap intervals, from per-item arrays."""
    order_a, weak_a, strong_a = np.asarray(order, float), np.asarray(small_ok, bool), np.asarray(large_ok, bool)
    ok_a = np.asarray([a.correct for a in cascade], bool)
    up_a = np.asarray([a.escalated for a in cascade], bool)

    def statistic(index: np.ndarray) -> dict[str, float | None]:
        figures = curve_figures(order_a[index], weak_a[index], strong_a[index])
        large = float(strong_a[index].mean())
        figures.update(accuracy=float(ok_a[index].mean()), escalation_rate=float(up_a[index].mean()),
                       small_accuracy=float(weak_a[index].mean()), large_accuracy=large,
                       share_of_large=(float(ok_a[index].mean()) / large) if large > 0 else None)
        return figures

    point = statistic(np.arange(len(order_a)))
    return {"point": point, "ci95": bootstrap(statistic, len(order_a), rounds)}


def scorer_auroc_ci(scores: Sequence[float], correct: Sequence[bool], rounds: int = 1000, seed: int = 0
                    ) -> tuple[float | None, list[float] | None]:
    """AUROC of a raw score for right-vs-wrong answers, and its bootstrap 95 % interval."""
    from sklearn.metrics import roc_auc_score

    x = np.nan_to_num(np.asarray(scores, dtype=float), neginf=-1e9, posinf=1e9)
    y = np.asarray(correct, dtype=bool)
    if y.all() or not y.any():
        return None, None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        index = rng.integers(0, len(y), len(y))
        if y[index].all() or not y[index].any():
            continue
        draws.append(float(roc_auc_score(y[index], x[index])))
    interval = [round(float(v), 4) for v in np.percentile(draws, [2.5, 97.5])] if draws else None
    return round(float(roc_auc_score(y, x)), 4), interval
