"""The per-cascade report's arithmetic: the exact interval, which labels count, the sentence."""

from __future__ import annotations

import math

import pytest

from gateway.accounting.selfcal_report import Agreement, CascadeSummary, clopper_pearson, kept_agreement, window_phrase
from tests.test_selfcal_store import label, state


def test_clopper_pearson_matches_its_closed_forms_and_is_conservative() -> None:
    # k = 0: the upper end solves (1 - p)^n = alpha/2; k = n: the lower end solves p^n = alpha/2.
    none_agree, all_agree = clopper_pearson(0, 10, 0.95), clopper_pearson(10, 10, 0.95)
    assert none_agree[0] == 0.0 and none_agree[1] == pytest.approx(1 - 0.025 ** (1 / 10))
    assert all_agree[0] == pytest.approx(0.025 ** (1 / 10)) and all_agree[1] == 1.0
    low, high = clopper_pearson(48, 50, 0.95)
    assert 0.85 < low < 0.96 < high < 0.996
    # Exact coverage is at least the level: for p = 0.9 and n = 40, sum the binomial mass covered.
    n, p = 40, 0.9
    covered = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)
                  if clopper_pearson(k, n, 0.95)[0] <= p <= clopper_pearson(k, n, 0.95)[1])
    assert covered >= 0.95
    assert clopper_pearson(0, 0, 0.95) == (0.0, 1.0)


def test_only_kept_labels_estimate_what_clients_received() -> None:
    labels = [label(i, agree=i % 4 != 0) for i in range(20)]  # kept: even i; of those, i % 4 == 0 disagree
    agreement = kept_agreement(labels, 0.9)
    assert (agreement.labels, agreement.agree) == (10, 5) and agreement.estimate == 0.5
    assert agreement.confidence == 0.9 and agreement.low is not None and agreement.low < 0.5
    assert kept_agreement([label(1)], 0.95) == Agreement(0, 0, None, None, None, 0.95)


def summary(**changes: object) -> CascadeSummary:
    values: dict[str, object] = dict(
        model="cascade", tier=0, requests=1000, escalation_rate=0.42, cost_usd=12.0, savings_usd=412.0,
        shadow_jobs=50, shadow_cost_usd=1.5, agreement=Agreement(410, 394, 394 / 410, 0.937, 0.977, 0.95),
        labels_in_window=700, labels_total=900, drift_alarms=0, state=state(3), window=window_phrase("7d"))
    values.update(changes)
    return CascadeSummary(**values)  # type: ignore[arg-type]


def test_the_sentence() -> None:
    assert summary().sentence() == ("kept 58 % of requests local, agreement with the large model 96.1 % ± 2.4 % "
                                    "(95 %, 410 labels), saved $412.00 this week")
    assert summary(savings_usd=-0.0123, window=window_phrase("30m")).sentence().endswith(
        "cost $0.0123 more than the reference LLM in the last 30m")
    assert summary(requests=0).sentence().startswith("no requests to cascade this week; agreement with")
    missing = summary(agreement=Agreement(0, 0, None, None, None, 0.95)).sentence()
    assert "not measured yet" in missing
    body = summary().to_json()
    assert body["kept_share"] == 0.58 and body["calibration"]["version"] == 3
    assert body["agreement"]["plus_minus"] == pytest.approx(394 / 410 - 0.937)  # the larger side
