"""Train a router from labelled records, calibrate its threshold, and score it.

Threshold calibration follows RouteLLM's ``calibrate_threshold``: for a target share of strong
calls, the threshold is the (1 - share) quantile of the scores on representative traffic.
Here that traffic is the training rows, scored out-of-fold (``calibration_folds``) so kNN and
MLP — which nearly memorise their own training rows — are calibrated on scores they would
give to questions they have not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from routers.learned.classifiers import ClassifierKind, fit_classifier
from routers.learned.offline.data import LabelledSet, LabelRule, load_labelled
from routers.learned.offline.embedding_cache import embed_cached
from routers.learned.offline.metrics import QualityCurve, RouterMetrics, random_router_metrics, router_metrics
from routers.learned.router import LearnedRouter, RouterMeta

FloatArray = npt.NDArray[np.float32]
DEFAULT_ESCALATION = 0.3


@dataclass(frozen=True)
class ThresholdTarget:
    """``escalation=0.3`` (share of requests sent to the strong model) or ``threshold=0.4``."""

    escalation: float | None = None
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str) -> ThresholdTarget:
        key, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or key not in ("escalation", "threshold") or not 0.0 <= number <= 1.0:
            raise ValueError(f"--target: escalation=FRACTION or threshold=SCORE in [0, 1], not {text!r}")
        return cls(escalation=number) if key == "escalation" else cls(threshold=number)


def threshold_for_escalation(scores: npt.ArrayLike, escalation: float) -> float:
    """The score above which ``escalation`` of these requests fall (``score >= t`` -> strong)."""
    if escalation <= 0.0:
        return float(np.nextafter(np.max(scores), np.inf))  # nothing reaches it
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - escalation))


def out_of_fold_scores(
    kind: ClassifierKind, x: FloatArray, y: npt.NDArray[np.bool_], *, folds: int, seed: int = 0,
    progress: bool = False, **params: Any,
) -> FloatArray:
    order = np.random.default_rng(seed).permutation(len(x))
    scores = np.zeros(len(x), dtype=np.float32)
    for held in tqdm(np.array_split(order, folds), desc="calibrating", unit="fold", disable=not progress):
        train = np.setdiff1d(order, held)
        scores[held] = fit_classifier(kind, x[train], y[train], seed=seed, **params).predict(x[held])
    return scores


def train_router(
    data: LabelledSet, vectors: FloatArray, *, kind: ClassifierKind = "logreg",
    target: ThresholdTarget = ThresholdTarget(escalation=DEFAULT_ESCALATION),
    label_rule: LabelRule = "strong_only", calibration_folds: int = 5, progress: bool = False,
    source: str = "", **params: Any,
) -> LearnedRouter:
    labels = data.labels(label_rule)
    model = fit_classifier(kind, vectors, labels, **params)
    if target.threshold is not None:
        threshold = target.threshold
    else:
        escalation = DEFAULT_ESCALATION if target.escalation is None else target.escalation
        if calibration_folds > 1:
            calibration = out_of_fold_scores(
                kind, vectors, labels, folds=calibration_folds, progress=progress, **params,
            )
        else:
            calibration = model.predict(vectors)
        threshold = threshold_for_escalation(calibration, escalation)
    meta = RouterMeta(
        classifier=kind, params=model.params(), threshold=threshold, label_rule=label_rule,
        target_escalation=target.escalation if target.threshold is None else None,
        training={
            "data": source, "rows": len(data), "positive_rate": float(labels.mean()),
            "weak_accuracy": float(data.weak_correct.mean()),
            "strong_accuracy": float(data.strong_correct.mean()),
        },
    )
    return LearnedRouter(model, meta)


def train_from_file(
    path: Path, out: Path, *, kind: ClassifierKind = "logreg", target: ThresholdTarget | None = None,
    label_rule: LabelRule = "strong_only", progress: bool = True,
) -> LearnedRouter:
    data = load_labelled(path)
    vectors = embed_cached(data.texts, progress=progress)
    router = train_router(
        data, vectors, kind=kind, target=target or ThresholdTarget(escalation=DEFAULT_ESCALATION),
        label_rule=label_rule, progress=progress, source=str(path),
    )
    router.save(out)
    return router


@dataclass(frozen=True)
class Evaluation:
    router: RouterMetrics
    random: RouterMetrics
    curve: QualityCurve
    escalation_at_threshold: float  # share of these rows the stored threshold sends to strong
    accuracy_at_threshold: float


def evaluate_scores(
    scores: npt.ArrayLike, data: LabelledSet, *, threshold: float, bins: int | None = 10,
) -> Evaluation:
    s = np.asarray(scores, dtype=np.float64)
    metrics, curve = router_metrics(s, data.weak_correct, data.strong_correct, bins=bins)
    to_strong = s >= threshold
    return Evaluation(
        router=metrics,
        random=random_router_metrics(data.weak_correct, data.strong_correct, bins=bins),
        curve=curve,
        escalation_at_threshold=float(to_strong.mean()),
        accuracy_at_threshold=float(np.where(to_strong, data.strong_correct, data.weak_correct).mean()),
    )


def evaluate_file(
    router: LearnedRouter, path: Path, *, bins: int | None = 10, progress: bool = True,
) -> Evaluation:
    data = load_labelled(path)
    scores = router.score_embeddings(embed_cached(data.texts, progress=progress))
    return evaluate_scores(scores, data, threshold=router.threshold, bins=bins)
