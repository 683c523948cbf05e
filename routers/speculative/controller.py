"""Adaptive speculation: pick the drafter and k that maximise expected tokens per unit time.

Costs are in target decode steps: ``c(k)`` = time to verify k drafts (k + 1 rows in one pass)
over the time of one decode step, ``d`` = a drafter's time per drafted token over the same
step (0 for prompt lookup); both measured once per strategy (:mod:`.calibration`) and refined
from every round and every stretch the target decodes alone (the load on a shared machine
drifts). With
per-token acceptance ``a`` (the standard i.i.d. model of Leviathan et al.), a round of k
drafts yields ``E(k) = (1 - a^(k+1)) / (1 - a)`` tokens and costs ``c(k) + k·d`` steps, so its
speed-up over the target alone is ``S(k) = E(k) / (c(k) + k·d)``. When no drafter and k beats
``margin``, the target decodes alone (k = 0) and speculation is tried again after
``probe_interval`` tokens, so a drafter that got better (or a prompt that repeats) is noticed;
each probe that still finds speculation losing doubles that interval (up to 8x), and the first
round that pays resets it. A drafter that would lose even if every draft were kept (a
compute-bound target: verifying k drafts costs about k + 1 steps) is never probed: there the
route is the target alone, plus nothing.

``a`` is estimated per drafter from decayed counts of kept drafts and rejections (each round
ends in at most one rejection): the estimate of a geometric acceptance run, adapting to the
prompt at hand while remembering earlier requests.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from routers.speculative.config import AdaptiveSettings

PERFECT = 0.999  # the acceptance estimates' cap: a drafter that is (nearly) always right


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one round of k drafts yields (kept drafts plus the target's own token)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass(slots=True)
class Costs:
    """Measured costs in target decode steps (``decode_seconds`` is one step)."""

    decode_seconds: float
    verify: dict[int, float]  # k -> c(k) as measured (c(0) = 1 by definition)
    draft: dict[str, float] = field(default_factory=dict)  # drafter -> d per drafted token

    def c(self, k: int) -> float:
        """c(k), linear between measured k (and beyond the last one, along the last slope)."""
        if k <= 0:
            return 1.0
        if k in self.verify:
            return self.verify[k]
        points = sorted({0: 1.0, **self.verify}.items())
        keys = [p[0] for p in points]
        i = bisect.bisect_left(keys, k)
        if i >= len(points):
            (k0, c0), (k1, c1) = points[-2], points[-1]
        else:
            (k0, c0), (k1, c1) = points[i - 1], points[i]
        return max(c0 + (c1 - c0) * (k - k0) / (k1 - k0), 1e-6)

    def d(self, drafter: str) -> float:
        return self.draft.get(drafter, 0.0)

    def speedup(self, drafter: str, alpha: float, k: int) -> float:
        return expected_tokens(alpha, k) / (self.c(k) + k * self.d(drafter))

    def best(self, drafter: str, alpha: float, limit: int) -> tuple[int, float]:
        """(k, S(k)) maximising S over 1..limit; (0, 1.0) when limit < 1."""
        best_k, best = 0, 1.0
        for k in range(1, limit + 1):
            value = self.speedup(drafter, alpha, k)
            if best_k == 0 or value > best:
                best_k, best = k, value
        return best_k, best

    def as_dict(self) -> dict[str, Any]:
        return {"decode_ms": round(self.decode_seconds * 1000, 3),
                "verify_cost": {str(k): round(v, 4) for k, v in sorted(self.verify.items())},
                "draft_cost": {name: round(v, 4) for name, v in self.draft.items()}}


class Acceptance:
    """Decayed counts of kept drafts and rejections; ``alpha`` = kept / (kept + rejected)."""

    def __init__(self, prior: float, decay: float) -> None:
        self.decay = decay
        self.kept = 3.0 * prior  # the prior weighs as much as ~3 drafts
        self.rejected = 3.0 * (1.0 - prior)

    @property
    def alpha(self) -> float:
        return min(self.kept / (self.kept + self.rejected), PERFECT)

    def observe(self, drafted: int, accepted: int) -> None:
        self.kept = self.kept * self.decay + accepted
        self.rejected = self.rejected * self.decay + (1 if accepted < drafted else 0)


@dataclass(frozen=True, slots=True)
class Choice:
    drafter: str | None  # None: the target decodes alone this step
    k: int
    expected_speedup: float
    probe: bool = False
    # k = 0 because speculation would lose (the target may decode alone for a stretch), rather
    # than because no drafter can propose right now (then one step, and look again).
    loses: bool = False


class Controller:
    """Per strategy (shared by its requests): the measured costs and each drafter's acceptance."""

    def __init__(self, settings: AdaptiveSettings, max_k: int, fixed_k: int | None, drafters: Iterable[str]) -> None:
        self.settings = settings
        self.max_k = max_k
        self.fixed_k = fixed_k
        self.costs: Costs | None = None
        self.probe_interval = settings.probe_interval  # grows while probes keep losing
        self.acceptance = {name: Acceptance(settings.prior_acceptance, settings.decay) for name in drafters}

    def alpha(self, drafter: str) -> float:
        return self.acceptance[drafter].alpha

    def observe(self, drafter: str, drafted: int, accepted: int) -> None:
        if drafted:
            self.acceptance[drafter].observe(drafted, accepted)

    def observe_round(self, drafter: str, k: int, draft_step_seconds: float | None, verify_seconds: float) -> None:
        """Refine c(k) and d from a round as run (relative to the current decode-step estimate);
        ``draft_step_seconds``: one draft call's time, when the round measured one."""
        costs = self.costs
        if costs is None or k <= 0:
            return
        before = costs.c(k)
        # One disturbed call (another request's prefill, a page fault) moves the estimate at most 2x.
        observed = min(max(verify_seconds / costs.decode_seconds, before / 2), before * 2)
        after = _blend(before, observed)
        # What slowed (or sped up) verifying k drafts — load, a longer context — acts on every k:
        # the whole curve's cost above one step is scaled alike, and c(k) lands on the blend.
        scale = (after - 1.0) / (before - 1.0) if before > 1.0 and after > 1.0 else 1.0
        costs.verify = {j: 1.0 + (c - 1.0) * scale for j, c in costs.verify.items()}
        costs.verify[k] = after
        if drafter in costs.draft and draft_step_seconds is not None:
            costs.draft[drafter] = _blend(costs.draft[drafter], draft_step_seconds / costs.decode_seconds)

    def observe_alone(self, tokens: int, seconds: float) -> None:
        """Refine the decode step from tokens the target decoded alone (its own loop's pace)."""
        if self.costs is not None and tokens > 0:
            self.costs.decode_seconds = _blend(self.costs.decode_seconds, seconds / tokens)

    def choose(self, options: Sequence[tuple[str, int]], remaining: int, since_speculation: int) -> Choice:
        """``options``: (drafter, how many tokens it can propose now). ``remaining``: output
        tokens still allowed (a round yields up to k + 1, so more than remaining - 1 drafts is waste)."""
        cap = min(self.max_k, remaining - 1)
        available = [(name, min(limit, cap)) for name, limit in options if min(limit, cap) > 0]
        if self.fixed_k is not None:
            if not available:
                return Choice(None, 0, 1.0)
            name, limit = available[0]
            k = min(self.fixed_k, limit)
            return Choice(name, k, self._speedup(name, k))
        costs = self.costs
        assert costs is not None, "calibrate before choosing"
        if not available:
            # Would any drafter pay if it could propose its most? If not, speculation loses here.
            best = max((costs.best(name, self.alpha(name), max(cap, 1))[1] for name, _ in options), default=1.0)
            return Choice(None, 0, 1.0, loses=best < self.settings.margin)
        scored = [(name, *costs.best(name, self.alpha(name), limit)) for name, limit in available]
        name, k, value = max(scored, key=lambda item: item[2])
        if value >= self.settings.margin:
            self.probe_interval = self.settings.probe_interval
            return Choice(name, k, value)
        # A probe refreshes alpha; it is only worth its cost for a drafter that would pay if it
        # were always right (on a compute-bound target, c(k) + k·d >= k + 1: no alpha ever pays).
        hopeful = [item for item in scored if self.could_pay(item[0])]
        if since_speculation >= self.probe_interval and hopeful:
            self.probe_interval = min(2 * self.probe_interval, 8 * self.settings.probe_interval)
            name, k, value = max(hopeful, key=lambda item: item[2])
            return Choice(name, k, value, probe=True)
        return Choice(None, 0, 1.0, loses=True)

    def tokens_until_probe(self, drafters: Iterable[str], since_speculation: int) -> int | None:
        """How long the target decodes alone before the next probe; None: no probe will come (no
        drafter could pay), the rest of the answer is the target's."""
        if not any(self.could_pay(name) for name in drafters):
            return None
        return max(self.probe_interval - since_speculation, 1)

    def could_pay(self, drafter: str) -> bool:
        """Whether the drafter beats ``margin`` at perfect acceptance with the measured costs."""
        return self.costs is not None and self.costs.best(drafter, PERFECT, self.max_k)[1] >= self.settings.margin

    def _speedup(self, drafter: str, k: int) -> float:
        return self.costs.speedup(drafter, self.alpha(drafter), k) if self.costs else 1.0

    def roofline(self, measured: dict[str, tuple[int, int]]) -> dict[str, Any]:
        """Per drafter, from this request's (kept drafts, rejections): the acceptance, the best k
        and the speed-up bound the measured costs and that acceptance imply (drafts always
        available, no overhead). Never below 1: the target alone is always an option."""
        out: dict[str, Any] = {}
        if self.costs is None:
            return out
        for name, (accepted, rejections) in measured.items():
            if accepted + rejections == 0:
                continue
            alpha = run_acceptance(accepted, rejections)
            k, bound = self.costs.best(name, alpha, self.max_k)
            out[name] = {"alpha": round(alpha, 4), "k": k if bound > 1.0 else 0, "speedup": round(max(bound, 1.0), 4)}
        return out


COST_WEIGHT = 0.2  # a new observation's share in the running cost estimates (~5 rounds of memory)


def _blend(previous: float, observed: float) -> float:
    return previous * (1 - COST_WEIGHT) + observed * COST_WEIGHT


def run_acceptance(accepted: int, rejections: int) -> float:
    """Per-token acceptance of the i.i.d. model from kept drafts and rejections (its maximum
    likelihood estimate: a round that kept every draft ended without testing the next one)."""
    return min(accepted / (accepted + rejections), PERFECT) if accepted + rejections else 0.0
