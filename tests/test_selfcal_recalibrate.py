"""Self-calibration's refit (issue 22): from labels to the next CalibrationState — hold before
min_labels, loosen / tighten after, the drift alarm, handoff's monitor-only state, the isotonic
map, the raw-scale threshold of a calibrated tier, and compare-and-set against a racing replica."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from gateway.core.selfcal import ESCALATE_ALL, CalibrationState, Label
from routers.cascade.calibration import apply_calibration
from routers.cascade.config import CascadeTier
from routers.cascade.selfcal.bound import select_threshold
from routers.cascade.selfcal.config import SelfCalibration
from routers.cascade.selfcal.recalibrate import (
    TierTarget,
    configured_raw_threshold,
    drift_evidence,
    isotonic_breakpoints,
    recalibrate,
    refit,
)
from tests.selfcal_support import MemoryStore

CONFIG = SelfCalibration.model_validate({"judge": {"type": "exact"}, "min_labels": 500, "window": 3000,
                                         "drift": {"window": 300}})


def labels_of(scores: Iterable[float], agree: Iterable[bool], start: float = 1000.0, kept: bool = True) -> list[Label]:
    return [Label(model="m", tier=0, score=float(s), kept=kept, agree=bool(a), judge="exact", small_text="",
                  large_text="", request_id=f"r{i}", created_at=start + i) for i, (s, a) in
            enumerate(zip(scores, agree, strict=True))]


def world(rng: np.random.Generator, n: int, slope: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1]; P(disagree | s) = slope * (1 - s): confident answers agree more."""
    scores = rng.uniform(size=n)
    return scores, rng.uniform(size=n) >= slope * (1 - scores)


def target(configured: float, config: SelfCalibration = CONFIG, kept_only: bool = False) -> TierTarget:
    return TierTarget.of("m", 0, config, configured, kept_only)


def test_the_raw_threshold_of_a_calibrated_tier_keeps_the_same_answers() -> None:
    tier = CascadeTier.model_validate({"backend": "s", "threshold": 0.6,
                                       "calibration": {"x": [-3, -2, -1, 0], "y": [0.1, 0.4, 0.4, 0.9]}})
    raw = configured_raw_threshold(tier)
    assert raw == pytest.approx(-0.6)  # 0.4 + (0.6 - 0.4) * 1 / 0.5
    for score in np.linspace(-4, 1, 501):
        if abs(score - raw) > 1e-9:
            assert (apply_calibration(tier.calibration, score) >= 0.6) == (score >= raw)
    plain = CascadeTier.model_validate({"backend": "s", "threshold": -1.2})
    assert configured_raw_threshold(plain) == -1.2
    low = tier.model_copy(update={"threshold": 0.05})
    high = tier.model_copy(update={"threshold": 0.95})
    assert configured_raw_threshold(low) == -ESCALATE_ALL and configured_raw_threshold(high) == ESCALATE_ALL


def test_isotonic_breakpoints_are_monotone_and_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    scores, agree = world(rng, 400, slope=0.6)
    xs, ys = isotonic_breakpoints(scores, agree.astype(float))
    assert list(xs) == sorted(xs) and list(ys) == sorted(ys)
    reference = IsotonicRegression(out_of_bounds="clip").fit(scores, agree.astype(float))
    assert np.interp(scores, xs, ys) == pytest.approx(reference.predict(scores), abs=1e-9)
    assert isotonic_breakpoints(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == ((), ())


def test_before_min_labels_the_threshold_is_held() -> None:
    rng = np.random.default_rng(0)
    scores, agree = world(rng, 400)
    first = refit(labels_of(scores, agree), None, target(0.5), now=5.0)
    assert first is not None and first.reason == "initial" and first.threshold == 0.5
    assert first.labels_used == 400 and first.kept_share == pytest.approx((scores >= 0.5).mean())
    again = refit(labels_of(scores, agree), first, target(0.5), now=6.0)
    assert again is not None and again.reason == "held" and again.threshold == 0.5


def test_with_enough_labels_it_loosens_or_tightens_to_the_certified_threshold() -> None:
    rng = np.random.default_rng(1)
    scores, agree = world(rng, 3000)
    certified = select_threshold(scores, ~agree, 0.05, 0.95, 20).threshold
    assert 0.2 < certified < 0.8
    strict = refit(labels_of(scores, agree), None, target(0.95), now=1.0)
    assert strict is not None and strict.reason == "loosened" and strict.threshold == certified
    assert strict.disagreement_bound <= 0.05 and strict.labels_used == 3000
    assert strict.disagreement_estimate < strict.disagreement_bound
    assert len(strict.calibration_x) >= 2 and strict.confidence == 0.95
    # From just below the certified threshold: not significantly wrong (no alarm), still tightened.
    loose = refit(labels_of(scores, agree), None, target(certified - 0.1), now=1.0)
    assert loose is not None and loose.reason == "tightened" and loose.threshold == certified


def test_drift_tightens_at_once_from_the_recent_labels_and_sets_the_old_ones_aside() -> None:
    rng = np.random.default_rng(2)
    scores, agree = world(rng, 3000)
    before = refit(labels_of(scores, agree), None, target(0.95), now=1.0)
    assert before is not None and before.reason == "loosened"
    recent_scores, recent_agree = world(rng, 300, slope=1.0)  # the small model got much worse
    labels = labels_of(np.concatenate([scores, recent_scores]), np.concatenate([agree, recent_agree]))
    alarm = refit(labels, before, target(0.95), now=2.0, drift_only=True)
    assert alarm is not None and alarm.reason == "drift" and alarm.threshold > before.threshold
    assert alarm.labels_used in (37, 75, 150, 300)  # the shortest span of newest labels that proved it
    assert alarm.labels_since == labels[-alarm.labels_used].created_at
    # Later refits see only post-alarm labels: fewer than min_labels, so no loosening.
    held = refit(labels, alarm, target(0.95), now=3.0)
    assert held is not None and held.reason == "held" and held.threshold == alarm.threshold
    # No evidence against the current threshold: a drift check stores nothing.
    assert refit(labels_of(scores, agree), before, target(0.95), now=2.0, drift_only=True) is None


def test_a_sharp_drift_shows_in_the_newest_few_labels() -> None:
    rng = np.random.default_rng(7)
    scores, agree = world(rng, 3000)
    before = refit(labels_of(scores, agree), None, target(0.95), now=1.0)
    assert before is not None
    broken = labels_of(np.concatenate([scores, np.full(40, 0.9)]), np.concatenate([agree, np.zeros(40, bool)]))
    alarm = refit(broken, before, target(0.95), now=2.0, drift_only=True)
    assert alarm is not None and alarm.reason == "drift" and alarm.labels_used == 300 // 8


def block(kept: int, disagree: int, escalated: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels at score 0.9 (kept by a 0.5 threshold), ``disagree`` of them disagreeing, and
    ``escalated`` at score 0.1."""
    scores = np.array([0.9] * kept + [0.1] * escalated)
    return scores, np.array([True] * disagree + [False] * (kept - disagree) + [False] * escalated)


def test_a_drift_must_be_proven_on_the_newest_labels_alone() -> None:
    old_scores, old_disagree = block(kept=1500, disagree=15, escalated=1500)  # 1 % before
    for disagree, alarm in [(8, False), (20, True)]:  # of the 75 kept among the newest 150 labels
        new_scores, new_disagree = block(kept=75, disagree=disagree, escalated=75)
        evidence = drift_evidence(np.concatenate([old_scores, new_scores]),
                                  np.concatenate([old_disagree, new_disagree]), 0.5, CONFIG)
        assert (evidence is not None) is alarm, disagree
    # 8 of 75 (10.7 %) is worse than before, but not proven above 5 % by 75 labels: the labels
    # before chose the threshold, so comparing with them would be biased (see drift_evidence).
    assert evidence is not None and evidence.recent.total == 150 and evidence.recent.disagree == 20


def test_a_drift_check_rarely_cries_wolf() -> None:
    """1000 checks at a threshold whose kept answers disagree at exactly the target: each may
    alarm with probability <= 1 - drift.confidence = 0.1 %."""
    rng = np.random.default_rng(8)
    alarms = 0
    for _ in range(1000):
        scores = rng.uniform(size=300)
        disagree = rng.uniform(size=300) < np.where(scores >= 0.5, 0.05, 0.5)
        alarms += drift_evidence(scores, disagree, 0.5, CONFIG) is not None
    assert alarms <= 5  # Poisson(1) exceeds 5 with probability 0.06 %


def test_drift_with_nothing_certifiable_escalates_everything() -> None:
    rng = np.random.default_rng(4)
    scores = rng.uniform(size=300)
    agree = rng.uniform(size=300) > 0.5  # half disagree everywhere
    current = CalibrationState("m", 0, 3, 0.2, 3000, 0.04, 0.03, 0.95, 0.8, "loosened", 1.0)
    alarm = refit(labels_of(scores, agree), current, target(0.95), now=2.0)
    assert alarm is not None and alarm.reason == "drift" and alarm.threshold == ESCALATE_ALL
    assert alarm.kept_share == 0.0 and alarm.disagreement_bound == 1.0


def test_handoff_states_report_the_kept_answers_bound_and_move_nothing() -> None:
    rng = np.random.default_rng(5)
    scores, agree = world(rng, 1000)
    labels = labels_of(scores, agree) + labels_of([0.0] * 50, [False] * 50, start=9000.0, kept=False)
    state = refit(labels, None, target(0.3, kept_only=True), now=1.0)
    assert state is not None and state.reason == "monitor" and state.threshold == 0.3
    assert state.labels_used == 1000 and state.kept_share == 1.0  # the escalated pairs are not counted
    assert state.disagreement_estimate == pytest.approx(float((~agree).mean()))
    assert refit(labels, None, target(0.3, kept_only=True), now=1.0, drift_only=True) is None


class RacingStore(MemoryStore):
    """Another replica stores a state between our read and our write, ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races

    async def put_state(self, state: CalibrationState) -> bool:
        if self.races > 0:
            self.races -= 1
            stored = self.states.get((state.model, state.tier))
            rival = CalibrationState(state.model, state.tier, stored.version + 1 if stored else 1, 0.9, 10,
                                     0.5, 0.1, 0.95, 0.1, "held", 0.0)
            await super().put_state(rival)
        return await super().put_state(state)


async def test_losing_the_race_rereads_and_refits_from_the_winner() -> None:
    rng = np.random.default_rng(6)
    scores, agree = world(rng, 200)
    store = RacingStore(races=1)
    for label in labels_of(scores, agree):
        await store.add_label(label)
    state = await recalibrate(store, target(0.5))
    assert state is not None and store.lost_races == 1
    assert state.version == 2 and state.threshold == 0.9  # held at the winner's threshold
    assert [s.version for s in store.history] == [1, 2]
    hopeless = RacingStore(races=10)
    for label in labels_of(scores, agree):
        await hopeless.add_label(label)
    assert await recalibrate(hopeless, target(0.5)) is None and hopeless.lost_races == 3


def test_window_must_hold_min_labels() -> None:
    with pytest.raises(ValueError, match="min_labels"):
        SelfCalibration.model_validate({"judge": {"type": "exact"}, "min_labels": 500, "window": 100})
