"""From a tier's labels to its next :class:`CalibrationState`, stored by compare-and-set.

One refit (:func:`refit`, pure and synchronous, run in a worker thread):

1. **Drift alarm** (:func:`drift_evidence`). On the newest labels (spans of 1/8 to all of
   ``drift.window``), at the current threshold: the Clopper–Pearson *lower* bound on the kept
   answers' disagreement. Above the target, the current threshold is wrong with confidence
   ``drift.confidence`` — not merely unproven — so it is tightened at once, whatever the label
   count, to the threshold those newest labels certify (escalate everything if they certify
   none), and older labels are set aside (``labels_since``): they describe traffic that is
   gone. Reason ``drift``.
2. **Too few labels** (fewer than ``min_labels`` since the last alarm): the threshold is held —
   never loosened on little evidence. Reason ``held`` (``initial`` for the first state).
3. **Otherwise** the threshold is the one Learn-then-Test certifies on the window
   (:func:`~routers.cascade.selfcal.bound.select_threshold`), looser or stricter than the current
   one. Reason ``loosened`` / ``tightened`` / ``held``.

In ``handoff`` mode (monitor only, kept answers only) no threshold moves: the state reports the
bound on the kept answers' disagreement. The refitted isotonic map (raw score -> P(agree)) is
stored as breakpoints for reports; decisions use the raw threshold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from gateway.core.selfcal import ESCALATE_ALL, CalibrationState, Label, SelfCalibrationStore
from routers.cascade.config import CascadeTier
from routers.cascade.selfcal.bound import (
    BoolArray,
    FloatArray,
    ThresholdTest,
    bound_at,
    cp_lower,
    select_threshold,
    start_labels,
)
from routers.cascade.selfcal.config import SelfCalibration

logger = logging.getLogger(__name__)

CAS_ATTEMPTS = 3  # a refit that loses the race this often leaves the state to the replicas that won


@dataclass(frozen=True, slots=True)
class TierTarget:
    """Which tier a refit is for and what it must meet."""

    model: str
    tier: int
    config: SelfCalibration
    configured_threshold: float  # the policy's threshold on the raw scale (before any state)
    kept_only: bool  # handoff: labels are the kept answers only, nothing to move
    start: int  # bound.start_labels of the config's target and confidence (computed once)

    @classmethod
    def of(cls, model: str, tier: int, config: SelfCalibration, configured_threshold: float,
           kept_only: bool = False) -> TierTarget:
        return cls(model, tier, config, configured_threshold, kept_only,
                   start_labels(config.max_disagreement, config.confidence))


def configured_raw_threshold(tier: CascadeTier) -> float:
    """The tier's threshold on the raw score scale: the smallest raw score whose calibrated value
    reaches it (the calibration map is non-decreasing and continuous, so "calibrated >= t" and
    "raw >= this" keep the same answers)."""
    assert tier.threshold is not None
    if tier.calibration is None:
        return tier.threshold
    xs, ys, target = tier.calibration.x, tier.calibration.y, tier.threshold
    if ys[0] >= target:
        return -ESCALATE_ALL  # every score is calibrated at or above it: keep everything
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if y1 >= target:
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return ESCALATE_ALL


def isotonic_breakpoints(scores: FloatArray, agree: FloatArray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool-adjacent-violators fit of P(agree) on the raw score, as breakpoints (x ascending)."""
    finite = np.isfinite(scores)
    xs, ys = scores[finite], agree[finite]
    unique, inverse = np.unique(xs, return_inverse=True)
    if len(unique) < 2:
        return (), ()
    sums, counts = np.bincount(inverse, ys), np.bincount(inverse).astype(float)
    blocks: list[list[float]] = []  # [sum, count, first x, last x]
    for value, total, count in zip(unique, sums, counts, strict=True):
        blocks.append([float(total), float(count), float(value), float(value)])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            merged = blocks.pop()
            blocks[-1] = [blocks[-1][0] + merged[0], blocks[-1][1] + merged[1], blocks[-1][2], merged[3]]
    points: list[tuple[float, float]] = []
    for total, count, first, last in blocks:
        mean = total / count
        points.extend([(first, mean)] if first == last else [(first, mean), (last, mean)])
    return tuple(p[0] for p in points), tuple(p[1] for p in points)


def refit(labels: Sequence[Label], current: CalibrationState | None, target: TierTarget, now: float, *,
          drift_only: bool = False) -> CalibrationState | None:
    """The next state (version left at 0 for the caller), or None when there is nothing to
    store (``drift_only`` and no alarm)."""
    config = target.config
    since = current.labels_since if current is not None else 0.0
    # handoff: only kept answers are labelled (a fallback to buffer may add pairs: not this population)
    labels = [label for label in labels if label.created_at >= since and (label.kept or not target.kept_only)]
    scores = np.array([label.score for label in labels], dtype=float)
    disagree = np.array([not label.agree for label in labels], dtype=bool)
    held = current.threshold if current is not None else target.configured_threshold
    window = slice(max(0, len(labels) - config.window), len(labels))
    if target.kept_only:
        if drift_only:
            return None
        test = bound_at(scores[window], disagree[window], -ESCALATE_ALL, config.confidence)
        return _state(target, held, test, "monitor", now, scores[window], disagree[window], since)
    evidence = drift_evidence(scores, disagree, held, config)
    if evidence is not None:
        alarm = evidence.recent
        tail = slice(len(labels) - alarm.total, len(labels))  # the newest labels that showed it
        selection = select_threshold(scores[tail], disagree[tail], config.max_disagreement,
                                     config.confidence, config.candidates, target.start)
        # Tighten, never loosen, on an alarm: a certified threshold at or below the one just
        # shown to fail contradicts that evidence, so nothing is trusted then.
        threshold = selection.threshold if selection.threshold > held else ESCALATE_ALL
        logger.info("self-calibration drift evidence: model %s tier %d, %d of the %d kept among the newest %d "
                    "labels disagree (lower bound %.3f > target %.3f) at threshold %.4f -> %.4g", target.model,
                    target.tier, alarm.disagree, alarm.kept, alarm.total,
                    cp_lower(alarm.disagree, alarm.kept, evidence.confidence), config.max_disagreement, held,
                    threshold)
        test = bound_at(scores[tail], disagree[tail], threshold, config.confidence)
        return _state(target, threshold, test, "drift", now, scores[tail], disagree[tail],
                      labels[tail.start].created_at)
    if drift_only:
        return None
    scores, disagree = scores[window], disagree[window]
    if len(scores) < config.min_labels:
        test = bound_at(scores, disagree, held, config.confidence)
        return _state(target, held, test, "initial" if current is None else "held", now, scores, disagree, since)
    selection = select_threshold(scores, disagree, config.max_disagreement, config.confidence, config.candidates,
                                 target.start)
    threshold = selection.threshold
    reason = "loosened" if threshold < held else "tightened" if threshold > held else "held"
    test = selection.chosen or bound_at(scores, disagree, threshold, config.confidence)
    return _state(target, threshold, test, reason, now, scores, disagree, since)


DRIFT_SCALES = (8, 4, 2, 1)  # the newest window/8, /4, /2 and the whole drift window are each tested


@dataclass(frozen=True, slots=True)
class DriftEvidence:
    recent: ThresholdTest  # the current threshold on the shortest span of newest labels that proved it broken
    confidence: float  # the confidence each span was tested at


def drift_evidence(scores: FloatArray, disagree: BoolArray, threshold: float,
                   config: SelfCalibration) -> DriftEvidence | None:
    """Whether the newest labels prove the current threshold broken, else None. ``scores`` and
    ``disagree`` are the labels since the last alarm, oldest first.

    Several spans of newest labels, because a sharp drift shows in the newest few long before it
    moves a long window's rate, and a mild one only over more labels. A span proves it when the
    Clopper–Pearson lower bound on its kept answers' disagreement exceeds the target, each span
    tested at ``1 - (1 - drift.confidence) / spans`` (Bonferroni), so one check raises a false
    alarm with probability at most ``1 - drift.confidence`` while traffic stays alike.

    Not compared with the labels before the span: those chose the current threshold, so at that
    threshold their disagreement is biased low (the threshold sits where they happened to look
    good), and a test of "worse than before" would cry wolf after every loosening.
    """
    lengths = sorted({max(1, config.drift.window // scale) for scale in DRIFT_SCALES})
    confidence = 1.0 - (1.0 - config.drift.confidence) / len(lengths)
    for length in lengths:
        span = min(length, len(scores))
        recent = bound_at(scores[len(scores) - span:], disagree[len(scores) - span:], threshold, confidence)
        if cp_lower(recent.disagree, recent.kept, confidence) > config.max_disagreement:
            return DriftEvidence(recent, confidence)
    return None


def _state(target: TierTarget, threshold: float, test: ThresholdTest, reason: str, now: float,
           scores: FloatArray, disagree: BoolArray, since: float) -> CalibrationState:
    xs, ys = isotonic_breakpoints(scores, (~disagree).astype(float))
    return CalibrationState(
        model=target.model, tier=target.tier, version=0, threshold=threshold, labels_used=test.total,
        disagreement_bound=test.bound, disagreement_estimate=test.estimate, confidence=target.config.confidence,
        kept_share=test.kept_share, reason=reason, updated_at=now, calibration_x=xs, calibration_y=ys,
        labels_since=since)


async def recalibrate(store: SelfCalibrationStore, target: TierTarget, *,
                      drift_only: bool = False) -> CalibrationState | None:
    """Refit from the store's labels and store the result by compare-and-set. When another
    replica stored a state first, re-read it and refit from it (its threshold is now the current
    one); returns the state stored (None: nothing to store, or the race was lost every time)."""
    config = target.config
    for _ in range(CAS_ATTEMPTS):
        current = await store.get_state(target.model, target.tier)
        labels = await store.labels(target.model, target.tier, max(config.window, config.drift.window))
        # The fit is CPU work (and its first call imports scipy): off the event loop.
        state = await asyncio.to_thread(refit, labels, current, target, time.time(), drift_only=drift_only)
        if state is None:
            return None
        state = replace(state, version=current.version + 1 if current is not None else 1)
        if await store.put_state(state):
            return state
    logger.info("self-calibration of %s tier %d: lost the store race %d times; keeping the other replicas' state",
                target.model, target.tier, CAS_ATTEMPTS)
    return None
