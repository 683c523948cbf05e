"""What a self-calibrating cascade delivered over a window: the one sentence a platform team needs.

Per (cascade model, judged tier) — ``GET /v1/gateway/usage/cascades`` and ``slm-gateway report``:

* **Agreement of kept answers**, estimated from the window's labels whose request the cascade
  *kept* (``Label.kept``): those are a random sample — at the shadow sample rate — of exactly the
  answers clients received from the small tier, so ``agree / labels`` estimates what it delivered,
  whatever the threshold was at the time. The interval is the exact two-sided Clopper–Pearson
  interval at the tier's confidence (the calibration state's, 95 % without one); ``±`` is its
  larger side. Shadow jobs skipped for the cap or the budget thin the sample when traffic peaks,
  so busy periods weigh a little less than they should.
* **The guarantee in force**: the shared state's threshold, its upper bound on kept answers'
  disagreement, the labels it was chosen on, the reason of its last change, drift alarms.
* **Money and routing** from the usage aggregates of the model: requests, escalation rate (kept =
  1 − escalation rate), spend, shadow jobs and their spend, and savings against the reference
  LLM (``gateway.reference_llm``) — net of the shadow spend, which is counted against savings.

A static route with monitor-only ``shadow:`` (routers/static/shadow.py) stores its labels as tier 0,
every one kept, and no state: it is listed like a cascade tier from the same store (agreement with
its reference backend, at the default 95 %; ``calibration`` null).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.accounting.selfcal_store import SharedSelfCalStore
from gateway.accounting.store import GroupTotals
from gateway.core.selfcal import CalibrationState, Label

DEFAULT_CONFIDENCE = 0.95
REPORT_LABEL_LIMIT = 10_000  # newest labels read per tier (they carry both answers' text)


@dataclass(frozen=True, slots=True)
class Agreement:
    labels: int
    agree: int
    estimate: float | None
    low: float | None
    high: float | None
    confidence: float

    @property
    def plus_minus(self) -> float | None:
        if self.estimate is None or self.low is None or self.high is None:
            return None
        return max(self.estimate - self.low, self.high - self.estimate)


def clopper_pearson(agree: int, labels: int, confidence: float) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion (each side ``(1 - confidence) / 2``)."""
    from scipy.stats import beta  # only reports pay for scipy's import

    if labels <= 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    low = 0.0 if agree == 0 else float(beta.ppf(tail, agree, labels - agree + 1))
    high = 1.0 if agree == labels else float(beta.ppf(1.0 - tail, agree + 1, labels - agree))
    return low, high


def kept_agreement(labels: Iterable[Label], confidence: float) -> Agreement:
    kept = [label for label in labels if label.kept]
    agree = sum(1 for label in kept if label.agree)
    if not kept:
        return Agreement(0, 0, None, None, None, confidence)
    low, high = clopper_pearson(agree, len(kept), confidence)
    return Agreement(len(kept), agree, agree / len(kept), low, high, confidence)


@dataclass(frozen=True, slots=True)
class CascadeSummary:
    model: str
    tier: int
    requests: int
    escalation_rate: float
    cost_usd: float
    savings_usd: float
    shadow_jobs: int
    shadow_cost_usd: float
    agreement: Agreement
    labels_in_window: int
    labels_total: int
    drift_alarms: int
    state: CalibrationState | None
    window: str

    @property
    def kept_share(self) -> float:
        return 1.0 - self.escalation_rate

    def sentence(self) -> str:
        """"kept 58 % of requests local, agreement with the large model 96.1 % ± 1.8 % (95 %), saved $412 this week"."""
        tier = f" (tier {self.tier})" if self.tier else ""
        agreement = self.agreement
        if agreement.estimate is None:
            agrees = "agreement with the large model not measured yet (no labelled kept answers)"
        else:
            agrees = (f"agreement with the large model {_percent(agreement.estimate, 1)} ± "
                      f"{_percent(agreement.plus_minus or 0.0, 1)} ({_percent(agreement.confidence, 0)}, "
                      f"{agreement.labels} labels)")
        if not self.requests:
            return f"no requests to {self.model}{tier} {self.window}; {agrees}"
        parts = [f"kept {_percent(self.kept_share, 0)} of requests local{tier}", agrees]
        money = f"saved {_dollars(self.savings_usd)}" if self.savings_usd >= 0 else \
            f"cost {_dollars(-self.savings_usd)} more than the reference LLM"
        parts.append(f"{money} {self.window}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        agreement = self.agreement
        state = self.state
        return {
            "model": self.model, "tier": self.tier, "window": self.window,
            "requests": self.requests, "escalation_rate": round(self.escalation_rate, 6),
            "kept_share": round(self.kept_share, 6), "cost_usd": round(self.cost_usd, 10),
            "savings_usd": round(self.savings_usd, 10), "shadow_jobs": self.shadow_jobs,
            "shadow_cost_usd": round(self.shadow_cost_usd, 10),
            "agreement": {**asdict(agreement), "plus_minus": agreement.plus_minus},
            "labels_in_window": self.labels_in_window, "labels_total": self.labels_total,
            "drift_alarms": self.drift_alarms,
            "calibration": None if state is None else {
                "threshold": state.threshold, "version": state.version, "reason": state.reason,
                "disagreement_bound": state.disagreement_bound, "disagreement_estimate": state.disagreement_estimate,
                "confidence": state.confidence, "labels_used": state.labels_used, "kept_share": state.kept_share,
                "updated_at": state.updated_at,
            },
            "sentence": self.sentence(),
        }


def window_phrase(since: str | float | None) -> str:
    text = str(since).strip().lower() if since is not None else ""
    if text in ("7d", "1w"):
        return "this week"
    if text in ("1d", "24h"):
        return "today"
    if text and text[-1] in "smhdw" and text[:-1].replace(".", "", 1).isdigit():
        return f"in the last {text}"
    return "in the window" if text else "in the last hour"


async def summarize(
    store: SharedSelfCalStore, totals_by_model: dict[str, GroupTotals], first_minute: int, last_minute: int,
    window: str, *, label_limit: int = REPORT_LABEL_LIMIT,
) -> list[CascadeSummary]:
    """One summary per (model, tier) the store knows, over whole minutes ``[first, last]``."""
    summaries: list[CascadeSummary] = []
    start, end = first_minute * 60.0, (last_minute + 1) * 60.0
    for model, tier in await store.cascades():
        state = await store.get_state(model, tier)
        labels = [label for label in await store.labels(model, tier, label_limit)
                  if start <= label.created_at < end]
        confidence = state.confidence if state is not None else DEFAULT_CONFIDENCE
        totals = totals_by_model.get(model) or GroupTotals()
        summaries.append(CascadeSummary(
            model=model, tier=tier, requests=totals.requests,
            escalation_rate=totals.escalated / totals.requests if totals.requests else 0.0,
            cost_usd=totals.cost_usd, savings_usd=totals.savings_usd, shadow_jobs=totals.shadow_jobs,
            shadow_cost_usd=totals.shadow_cost_usd, agreement=kept_agreement(labels, confidence),
            labels_in_window=len(labels), labels_total=await store.label_count(model, tier),
            drift_alarms=await store.drift_alarms(model, tier), state=state, window=window,
        ))
    return summaries


def summaries_body(summaries: Sequence[CascadeSummary], first_minute: int, last_minute: int) -> dict[str, Any]:
    return {"since": first_minute * 60, "until": (last_minute + 1) * 60, "generated_at": time.time(),
            "cascades": [summary.to_json() for summary in summaries]}


def _dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"  # cents hide a small deployment's savings


def _percent(share: float, digits: int) -> str:
    value = share * 100
    return f"{value:.{digits}f} %" if math.isfinite(value) else "- %"
