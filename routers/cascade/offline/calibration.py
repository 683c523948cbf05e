"""Fit a cascade tier's calibration and pick its threshold (``slm-gateway calibrate``).

Targets:
* ``escalation=r`` — the threshold that sends a share r of the calibration set to the next tier;
* ``accuracy=a`` — the lowest threshold at which the answers the small model keeps are correct
  with rate ≥ a on the calibration set (the fewest escalations that keep that quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routers.cascade.calibration import apply_calibration
from routers.cascade.config import Calibration


@dataclass(frozen=True, slots=True)
class CalibrationTarget:
    kind: str  # "escalation" | "accuracy"
    value: float

    @classmethod
    def parse(cls, text: str) -> CalibrationTarget:
        kind, _, value = text.partition("=")
        if kind not in {"escalation", "accuracy"} or not value:
            raise ValueError("target is escalation=R or accuracy=A, e.g. escalation=0.3")
        number = float(value)
        if not 0.0 <= number <= 1.0:
            raise ValueError("target value must be within [0, 1]")
        return cls(kind, number)


def fit_isotonic(scores: Sequence[float], correct: Sequence[bool]) -> Calibration:
    from sklearn.isotonic import IsotonicRegression

    x = np.asarray(scores, dtype=float)
    finite = np.isfinite(x)
    x, y = x[finite], np.asarray(correct, dtype=float)[finite]
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise ValueError("calibration needs at least two distinct finite scores")
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    xs = [float(v) for v in model.X_thresholds_]
    ys = [float(v) for v in model.y_thresholds_]
    return Calibration(x=xs, y=ys)


def pick_threshold(calibrated: Sequence[float], correct: Sequence[bool], target: CalibrationTarget) -> float:
    """Threshold on the calibrated scale; escalate when score < threshold."""
    values = np.asarray(calibrated, dtype=float)
    if target.kind == "escalation":
        return float(np.quantile(values, target.value)) if target.value > 0 else float(values.min())
    ok = np.asarray(correct, dtype=bool)
    for threshold in sorted(set(values.tolist())):
        kept = values >= threshold
        if kept.any() and ok[kept].mean() >= target.value:
            return float(threshold)
    # Nothing meets it: escalate everything. The margin survives the 6-digit rounding of the
    # policy file, and P(correct) never exceeds 1.
    return float(values.max()) + 1e-3


def reliability_bins(calibrated: Sequence[float], correct: Sequence[bool], bins: int = 10
                     ) -> list[tuple[float, float, int]]:
    """(mean predicted, observed accuracy, count) per equal-width bin of predicted P(correct)."""
    p = np.clip(np.asarray(calibrated, dtype=float), 0.0, 1.0)
    y = np.asarray(correct, dtype=float)
    out = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        mask = (p >= low) & ((p < high) if index < bins - 1 else (p <= high))
        if mask.any():
            out.append((float(p[mask].mean()), float(y[mask].mean()), int(mask.sum())))
    return out


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    calibration: Calibration
    threshold: float  # on the calibrated scale: P(correct)
    escalation: float  # share of the calibration set below the threshold
    kept_accuracy: float | None  # accuracy of the answers the small model keeps
    calibrated: list[float]


def calibrate(raw: Sequence[float], correct: Sequence[bool], target: CalibrationTarget) -> CalibrationResult:
    """Fit the isotonic map on (raw score, correct) pairs and pick the threshold for ``target``."""
    calibration = fit_isotonic(raw, correct)
    calibrated = [apply_calibration(calibration, s) for s in raw]
    threshold = pick_threshold(calibrated, correct, target)
    kept = [c for p, c in zip(calibrated, correct, strict=True) if p >= threshold]
    return CalibrationResult(calibration, threshold, 1 - len(kept) / len(raw),
                             (sum(kept) / len(kept)) if kept else None, calibrated)
