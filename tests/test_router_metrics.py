"""RouteLLM's router metrics on hand-made curves and synthetic routers with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from routers.learned.offline.metrics import (
    QualityCurve,
    apgr,
    cpt,
    quality_curve,
    random_router_metrics,
    router_metrics,
)


def _curve(share: list[float], quality: list[float], weak: float = 0.6, strong: float = 0.8) -> QualityCurve:
    return QualityCurve(np.array(share), np.array(quality), np.zeros(len(share)), weak, strong)


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weak right 60 %, strong right 80 %; strong is right whenever weak is (no weak-only wins)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    return u < 0.6, u < 0.8


def test_straight_line_is_the_random_router() -> None:
    line = _curve([0.0, 0.5, 1.0], [0.6, 0.7, 0.8])
    assert apgr(line) == pytest.approx(0.5)
    assert cpt(line, 0.5) == pytest.approx(0.5)
    assert cpt(line, 0.8) == pytest.approx(0.8)


def test_curve_that_recovers_the_gap_at_once_has_apgr_one() -> None:
    oracle = _curve([0.0, 0.001, 1.0], [0.6, 0.8, 0.8])
    assert apgr(oracle) == pytest.approx(1.0, abs=1e-3)
    assert cpt(oracle, 0.5) == pytest.approx(0.0005)
    assert cpt(oracle, 0.8) == pytest.approx(0.0008)


def test_cpt_takes_the_first_crossing_of_a_non_monotone_curve() -> None:
    bumpy = _curve([0.0, 0.2, 0.4, 1.0], [0.6, 0.72, 0.65, 0.8])
    # PGR: 0, 0.6, 0.25, 1 -> 50 % is first reached between x=0 and x=0.2.
    assert cpt(bumpy, 0.5) == pytest.approx(0.2 * 0.5 / 0.6)
    assert cpt(bumpy, 0.8) == pytest.approx(0.4 + 0.6 * (0.8 - 0.25) / 0.75)
    assert cpt(bumpy, 1.5) == 1.0


def test_random_router_measures_about_half() -> None:
    weak, strong = _synthetic(20_000, seed=7)
    metrics = random_router_metrics(weak, strong, seeds=5)
    assert metrics.apgr == pytest.approx(0.5, abs=0.02)
    assert metrics.cpt50 == pytest.approx(0.5, abs=0.03)
    assert metrics.cpt80 == pytest.approx(0.8, abs=0.03)
    assert metrics.weak_accuracy == pytest.approx(0.6, abs=0.01)


def test_oracle_router_on_data_matches_the_closed_form() -> None:
    weak, strong = _synthetic(5_000, seed=1)
    needed = strong & ~weak
    p = needed.mean()
    metrics, curve = router_metrics(needed.astype(float), weak, strong, bins=None)
    # Curve (0, weak) -> (p, strong) -> (1, strong): area of PGR = p/2 + (1 - p).
    assert metrics.apgr == pytest.approx(1 - p / 2)
    assert metrics.cpt50 == pytest.approx(p / 2)
    assert list(curve.strong_share) == pytest.approx([0.0, p, 1.0])


def test_inverted_oracle_is_worse_than_random() -> None:
    weak, strong = _synthetic(5_000, seed=2)
    metrics, _ = router_metrics((weak | ~strong).astype(float), weak, strong)
    assert metrics.apgr < 0.3
    assert metrics.cpt80 > 0.9


def test_routellm_thresholds_span_all_and_nothing() -> None:
    scores = np.linspace(0, 1, 101)
    curve = quality_curve(scores, scores < 0.5, np.ones(101, dtype=bool), bins=10)
    assert len(curve.strong_share) == 11
    assert curve.strong_share[0] == 0.0 and curve.strong_share[-1] == 1.0
    assert np.all(np.diff(curve.strong_share) >= 0)


def test_equal_models_have_no_gap_to_recover() -> None:
    same = np.array([True, False, True])
    with pytest.raises(ValueError, match="not better"):
        router_metrics([0.1, 0.2, 0.3], same, same)
