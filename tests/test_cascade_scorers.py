"""Confidence scorers on hand-computed logprobs; calibration and threshold picking."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from gateway.core.backend import TokenLogprob, TopLogprob
from routers.cascade.calibration import apply_calibration
from routers.cascade.config import EarlyExit
from routers.cascade.monitor import RunningCheck
from routers.cascade.offline.calibration import CalibrationTarget, fit_isotonic, pick_threshold, reliability_bins
from routers.cascade.scorers import SCORERS, first_token_margin, mean_margin, neg_entropy, quantile_logprob


def tok(lp: float, *tops: float, text: str = "x") -> TokenLogprob:
    return TokenLogprob(token=text, logprob=lp, top=tuple(TopLogprob(f"t{i}", v) for i, v in enumerate(tops)))


ANSWER = [tok(math.log(0.5), math.log(0.5), math.log(0.3)), tok(math.log(0.9), math.log(0.9), math.log(0.05)),
          tok(math.log(0.2), math.log(0.4), math.log(0.2))]


def test_mean_min_quantile() -> None:
    assert SCORERS["mean_logprob"](ANSWER) == pytest.approx((math.log(0.5) + math.log(0.9) + math.log(0.2)) / 3)
    assert SCORERS["min_logprob"](ANSWER) == pytest.approx(math.log(0.2))
    # 10 % quantile of [log .2, log .5, log .9]: 0.2 of the way from log .2 to log .5
    assert quantile_logprob(ANSWER) == pytest.approx(math.log(0.2) + 0.2 * (math.log(0.5) - math.log(0.2)))


def test_margins_and_entropy_by_hand() -> None:
    assert mean_margin(ANSWER) == pytest.approx(((0.5 - 0.3) + (0.9 - 0.05) + (0.4 - 0.2)) / 3)
    # A leading whitespace token is skipped: the decision is the first real token.
    assert first_token_margin([tok(-1.0, text=" "), *ANSWER]) == pytest.approx(0.2)
    # No alternatives returned: the token's own probability.
    assert first_token_margin([tok(-1.0)]) == pytest.approx(math.exp(-1.0))
    # First token: top-2 renormalised to (5/8, 3/8).
    h1 = -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8))
    assert neg_entropy(ANSWER[:1]) == pytest.approx(-h1)


def test_scores_rank_confident_answers_higher() -> None:
    confident = [tok(math.log(0.95), math.log(0.95), math.log(0.03))] * 4
    unsure = [tok(math.log(0.3), math.log(0.35), math.log(0.3))] * 4
    for name, scorer in SCORERS.items():
        assert scorer(confident) > scorer(unsure), name
        assert scorer([]) == -math.inf, name


def test_running_check_fails_on_window_and_token_floor() -> None:
    check = RunningCheck(EarlyExit(window=2, floor=-1.0))
    assert check.add(tok(-0.1)) and check.add(tok(-0.5))
    assert not check.add(tok(-3.0))  # window mean (-0.5 - 3.0) / 2 < -1
    assert check.failed_at == 3 and not check.add(tok(0.0))
    strict = RunningCheck(EarlyExit(window=50, floor=-99, token_floor=-4.0))
    assert strict.add(tok(-3.9)) and not strict.add(tok(-4.1))


def test_isotonic_calibration_is_monotone_and_meets_targets() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=400)
    correct = rng.random(400) < 1 / (1 + np.exp(-2 * scores))  # P(correct) rises with the score
    calibration = fit_isotonic(scores.tolist(), correct.tolist())
    mapped = [apply_calibration(calibration, s) for s in np.linspace(-3, 3, 50)]
    assert all(b >= a for a, b in itertools.pairwise(mapped))
    calibrated = [apply_calibration(calibration, s) for s in scores]
    threshold = pick_threshold(calibrated, correct.tolist(), CalibrationTarget.parse("escalation=0.3"))
    escalated = np.mean(np.asarray(calibrated) < threshold)
    assert 0.2 <= escalated <= 0.35
    target = CalibrationTarget.parse("accuracy=0.8")
    threshold = pick_threshold(calibrated, correct.tolist(), target)
    kept = np.asarray(calibrated) >= threshold
    assert correct[kept].mean() >= 0.8
    assert correct.mean() < 0.8  # the target is not met without escalating
    bins = reliability_bins(calibrated, correct.tolist())
    assert sum(n for _, _, n in bins) == 400
    with pytest.raises(ValueError):
        CalibrationTarget.parse("speed=1")


def test_cascade_config_is_validated() -> None:
    from pydantic import ValidationError

    from routers.cascade.config import CascadeStrategy

    tiers = [{"backend": "slm", "threshold": 0.5}, {"backend": "llm"}]
    assert CascadeStrategy.model_validate({"type": "cascade", "tiers": tiers}).referenced_backends() == ["slm", "llm"]
    bad: list[dict[str, Any]] = [
        {"tiers": [{"backend": "slm"}, {"backend": "llm"}]},  # a non-final tier needs a threshold
        {"tiers": tiers, "mode": "handoff"},  # hand-off switches on the running check: early_exit needed
        {"tiers": tiers, "router": {"router_dir": "r", "low": 0.8, "high": 0.2}},  # empty band
        {"tiers": [{"backend": "slm", "threshold": 0.5, "scorer": "vibes"}, {"backend": "llm"}]},
        {"tiers": [{"backend": "slm", "threshold": 0.5, "calibration": {"x": [1, 0], "y": [0.1, 0.2]}},
                   {"backend": "llm"}]},
    ]
    for extra in bad:
        with pytest.raises(ValidationError):
            CascadeStrategy.model_validate({"type": "cascade", **extra})
