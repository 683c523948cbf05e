"""Self-calibration's bound (issue 22): Clopper–Pearson, the candidate grid and the
fixed-sequence (Learn then Test) threshold selection, checked against exact binomial sums and
seeded simulations of their guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from gateway.core.selfcal import ESCALATE_ALL
from routers.cascade.selfcal.bound import (
    bound_at,
    candidate_thresholds,
    cp_lower,
    cp_upper,
    min_certifiable,
    select_threshold,
    start_labels,
)


def test_clopper_pearson_known_values() -> None:
    # k = 0 has the closed form 1 - (1 - c)^(1/n) (the "rule of three" is its approximation).
    assert cp_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-9)
    assert cp_upper(0, 59, 0.95) < 0.05 < cp_upper(0, 58, 0.95)
    assert cp_upper(5, 5, 0.95) == 1.0 and cp_upper(0, 0, 0.95) == 1.0
    assert cp_lower(0, 50, 0.95) == 0.0 and cp_lower(3, 0, 0.95) == 0.0
    # The bound is where the binomial tail equals 1 - confidence.
    for k, n in [(1, 79), (7, 300), (40, 1000)]:
        upper, lower = cp_upper(k, n, 0.95), cp_lower(k, n, 0.95)
        assert binom.cdf(k, n, upper) == pytest.approx(0.05, abs=1e-9)
        assert binom.sf(k - 1, n, lower) == pytest.approx(0.05, abs=1e-9)
        assert lower < k / n < upper


@pytest.mark.parametrize("n", [20, 100, 400])
@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_clopper_pearson_covers_at_least_its_confidence_exactly(n: int, rate: float) -> None:
    """P(rate <= U(K, n)) over K ~ Bin(n, rate), summed exactly: never below 95 %."""
    covered = sum(binom.pmf(k, n, rate) for k in range(n + 1) if rate <= cp_upper(k, n, 0.95))
    lower_covered = sum(binom.pmf(k, n, rate) for k in range(n + 1) if rate >= cp_lower(k, n, 0.95))
    assert covered >= 0.95 - 1e-12 and lower_covered >= 0.95 - 1e-12


def test_minimum_and_start_label_counts() -> None:
    assert min_certifiable(0.05, 0.95) == 59
    assert min_certifiable(0.01, 0.95) == math.ceil(math.log(0.05) / math.log(0.99))
    start = start_labels(0.05, 0.95)
    assert cp_upper(math.floor(0.025 * start), start, 0.95) <= 0.05
    assert cp_upper(math.floor(0.025 * (start - 1)), start - 1, 0.95) > 0.05
    assert start_labels(0.05, 0.99) > start > min_certifiable(0.05, 0.95)


def test_candidates_are_strictest_first_at_kept_shares_and_skip_thin_ones() -> None:
    scores = np.arange(100, dtype=float)  # 0..99, distinct
    grid = candidate_thresholds(scores, 10, min_kept=1)
    assert grid == [90.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 20.0, 10.0, 0.0]
    assert candidate_thresholds(scores, 10, min_kept=35)[0] == 60.0  # keeps 40 >= 35; 70 keeps 30
    tied = np.array([1.0] * 50 + list(np.linspace(-1, 0, 50)) + [-math.inf] * 5)
    grid = candidate_thresholds(tied, 20, min_kept=1)
    assert grid[0] == 1.0 and grid == sorted(set(grid), reverse=True)  # ties collapse, order kept
    assert all(math.isfinite(t) for t in grid)
    assert candidate_thresholds(np.array([-math.inf]), 10, 1) == []


def test_bound_at_counts_what_a_threshold_keeps() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.2, -math.inf])
    disagree = np.array([False, True, False, True, True])
    test = bound_at(scores, disagree, 0.7, 0.95)
    assert (test.kept, test.disagree, test.total) == (3, 1, 5)
    assert test.estimate == pytest.approx(1 / 3) and test.kept_share == pytest.approx(0.6)
    assert test.bound == pytest.approx(cp_upper(1, 3, 0.95))


def test_selection_stops_at_the_first_failure_and_keeps_the_last_pass() -> None:
    # 1000 labels: the top 600 never disagree, below them every one does.
    scores = np.linspace(1.0, 0.0, 1000)
    disagree = np.arange(1000) >= 600
    selection = select_threshold(scores, disagree, 0.05, 0.95, 20)
    assert selection.chosen is not None and selection.chosen.kept == 600
    assert selection.threshold == pytest.approx(scores[599])
    assert [t.bound <= 0.05 for t in selection.tested] == [True] * (len(selection.tested) - 1) + [False]
    assert selection.tested[0].kept >= start_labels(0.05, 0.95)


def test_a_failure_early_in_the_sequence_hides_every_looser_pass() -> None:
    """Fixed-sequence testing: once one threshold fails, looser ones are never tested, even if
    their bound alone would pass (here a bad streak among the most confident answers)."""
    scores = np.linspace(1.0, 0.0, 2000)
    disagree = np.zeros(2000, dtype=bool)
    disagree[:15] = True  # 15 of the 200 most confident disagree: the first candidate fails
    selection = select_threshold(scores, disagree, 0.05, 0.95, 10)
    assert bound_at(scores, disagree, float(scores[-1]), 0.95).bound < 0.05  # keep-all alone would pass
    assert selection.threshold == ESCALATE_ALL and selection.chosen is None and len(selection.tested) == 1


def test_nothing_certifiable_escalates_everything() -> None:
    selection = select_threshold([0.5] * 50, [False] * 50, 0.05, 0.95, 20)  # 50 < min_certifiable
    assert selection.threshold == ESCALATE_ALL and len(selection.tested) == 1
    assert select_threshold([], [], 0.05, 0.95, 20).threshold == ESCALATE_ALL


def test_a_window_smaller_than_the_start_tests_keeping_everything() -> None:
    scores = np.linspace(1.0, 0.0, 100)  # 100 < start_labels: one candidate, the lowest score
    selection = select_threshold(scores, np.zeros(100, dtype=bool), 0.05, 0.95, 20)
    assert [t.kept for t in selection.tested] == [100] and selection.threshold == 0.0
    one_bad = np.zeros(100, dtype=bool)
    one_bad[3] = True  # U(1, 100) = 0.046: still certified; two would not be
    assert select_threshold(scores, one_bad, 0.05, 0.95, 20).threshold == 0.0
    one_bad[4] = True
    assert select_threshold(scores, one_bad, 0.05, 0.95, 20).threshold == ESCALATE_ALL


def test_the_family_wise_error_stays_under_one_minus_confidence() -> None:
    """A world built to tempt the selection: disagreement 4 % for the top 30 % of scores, then
    exactly at the target (5 %) for the next 30 % and 15 % below. Every threshold keeping more
    than 30 % is unsafe or borderline; count how often the selection certifies an unsafe one
    (its true kept disagreement > 5 %) over 400 seeded draws of 3 000 labels."""
    def true_risk(kept_share: float) -> float:
        # the mean disagreement over the top ``kept_share`` of the score range
        parts = [(min(kept_share, 0.3), 0.04), (min(max(kept_share - 0.3, 0), 0.3), 0.05),
                 (max(kept_share - 0.6, 0), 0.15)]
        return sum(w * r for w, r in parts) / kept_share

    errors, start = 0, start_labels(0.05, 0.95)
    for seed in range(400):
        rng = np.random.default_rng(seed)
        u = rng.uniform(size=3000)  # the score is 1 - u: u is the share of traffic above it
        rate = np.where(u < 0.3, 0.04, np.where(u < 0.6, 0.05, 0.15))
        disagree = rng.uniform(size=3000) < rate
        selection = select_threshold(1 - u, disagree, 0.05, 0.95, 20, start)
        if selection.chosen is not None:
            errors += true_risk(1 - selection.threshold) > 0.05 + 1e-9
    # Binomial(400, 0.05) exceeds 30 with probability < 1 %: a procedure at 5 % passes.
    assert errors <= 30, errors
