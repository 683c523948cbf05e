"""RouteLLM's router metrics (Ong et al., arXiv 2406.18665, section 5.1).

A router gives each request a score; sweeping a threshold over the scores trades the share of
requests sent to the strong model (x) against the quality of the mixed answers (y).

* PGR(x) = (q(x) - q_weak) / (q_strong - q_weak): the part of the weak->strong gap recovered.
* APGR: the area under PGR over x in [0, 1] (trapezoid rule over the curve's points).
* CPT(p): the smallest strong share at which the curve reaches PGR = p.

The curve follows RouteLLM's evaluation: thresholds at the score quantiles (``bins`` equal
bins, 10 by default), "strong if score >= threshold" except the top threshold, which uses ">"
so the curve always includes x = 0. ``bins=None`` uses every distinct score (exact curve).
The random router's expected curve is the straight line from (0, q_weak) to (1, q_strong):
APGR 0.5, CPT(50%) 0.5, CPT(80%) 0.8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
# Seeds of the random router's own stream, so its scores never replay a caller's seeded data.
RANDOM_ROUTER_STREAM = 0x5EED_0F_12
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class QualityCurve:
    strong_share: FloatArray  # ascending, in [0, 1]
    quality: FloatArray  # accuracy of the routed answers at that share
    thresholds: FloatArray
    weak_quality: float
    strong_quality: float

    def pgr(self) -> FloatArray:
        gap = self.strong_quality - self.weak_quality
        if gap <= 0:
            raise ValueError("the strong model is not better than the weak one on this data: PGR undefined")
        return (self.quality - self.weak_quality) / gap


def quality_curve(
    scores: npt.ArrayLike, weak_correct: npt.ArrayLike, strong_correct: npt.ArrayLike,
    *, bins: int | None = 10,
) -> QualityCurve:
    s = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak_correct, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    if not (len(s) == len(weak) == len(strong)) or len(s) == 0:
        raise ValueError("scores and correctness arrays must be non-empty and of equal length")
    # RouteLLM: quantile cuts, ">=" except ">" at the top cut (the max) so x = 0 is on the curve.
    # Exact curve: ">=" at every distinct score, then "> max".
    cuts = np.unique(s) if bins is None else np.quantile(s, np.linspace(0.0, 1.0, bins + 1))
    selections = [(s >= cut, cut) for cut in (cuts if bins is None else cuts[:-1])]
    selections.append((s > cuts[-1], cuts[-1]))
    points: list[tuple[float, float, float]] = []
    for to_strong, cut in selections:
        points.append((float(to_strong.mean()), float(np.where(to_strong, strong, weak).mean()), float(cut)))
    points.sort(key=lambda p: (p[0], p[1]))
    share, quality, thresholds = (np.array(column) for column in zip(*points, strict=True))
    return QualityCurve(share, quality, thresholds, float(weak.mean()), float(strong.mean()))


def apgr(curve: QualityCurve) -> float:
    """Area under PGR(x); RouteLLM integrates over the x range its curve spans (always [0, 1] here)."""
    x = curve.strong_share
    span = float(x[-1] - x[0])
    if span <= 0:
        raise ValueError("the curve spans no range of strong shares")
    return float(np.trapezoid(curve.pgr(), x) / span)


def cpt(curve: QualityCurve, target_pgr: float) -> float:
    """Smallest strong share where the piecewise-linear curve reaches ``target_pgr``.

    Unlike ``np.interp`` on a non-monotone curve, this walks the segments and returns the first
    crossing, which is the paper's "minimum % of strong calls"; 1.0 if never reached.
    """
    x, y = curve.strong_share, curve.pgr()
    if y[0] >= target_pgr:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target_pgr:
            if y[i] == y[i - 1]:
                return float(x[i])
            fraction = (target_pgr - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + fraction * (x[i] - x[i - 1]))
    return 1.0


@dataclass(frozen=True)
class RouterMetrics:
    n: int
    apgr: float
    cpt50: float
    cpt80: float
    weak_accuracy: float
    strong_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def router_metrics(
    scores: npt.ArrayLike, weak_correct: npt.ArrayLike, strong_correct: npt.ArrayLike,
    *, bins: int | None = 10,
) -> tuple[RouterMetrics, QualityCurve]:
    curve = quality_curve(scores, weak_correct, strong_correct, bins=bins)
    metrics = RouterMetrics(
        n=len(np.asarray(scores)), apgr=apgr(curve), cpt50=cpt(curve, 0.5), cpt80=cpt(curve, 0.8),
        weak_accuracy=curve.weak_quality, strong_accuracy=curve.strong_quality,
    )
    return metrics, curve


def random_router_metrics(
    weak_correct: npt.ArrayLike, strong_correct: npt.ArrayLike, *, seeds: int = 20, bins: int | None = 10,
) -> RouterMetrics:
    """The random router measured, not assumed: mean over ``seeds`` uniform-score routers."""
    n = len(np.asarray(weak_correct))
    runs = [
        router_metrics(scores, weak_correct, strong_correct, bins=bins)[0]
        for scores in (np.random.default_rng([RANDOM_ROUTER_STREAM, s]).random(n) for s in range(seeds))
    ]
    first = runs[0]
    return RouterMetrics(
        n=n, apgr=float(np.mean([r.apgr for r in runs])), cpt50=float(np.mean([r.cpt50 for r in runs])),
        cpt80=float(np.mean([r.cpt80 for r in runs])), weak_accuracy=first.weak_accuracy,
        strong_accuracy=first.strong_accuracy,
    )
