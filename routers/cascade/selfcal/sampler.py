"""One self-calibrating tier inside a cascade: its effective threshold, which requests it
labels, and the shadow jobs that label them.

**Sampling design (why the bound stays valid).** The bound of :mod:`.bound` needs labels that
are a uniform sample of the requests the tier's threshold decides, across the whole score range:

* A request the tier **kept** is labelled with probability ``sample_rate``: a shadow job asks
  the next tier for its answer off the client's path and judges the pair.
* A request the tier **escalated** (``buffer`` mode) already has both answers — the discarded
  small one and the next tier's, which the client received. It could be labelled every time for
  free, but then low scores would be over-represented among the labels and every kept-share
  estimate biased; so it is labelled with the *same* probability ``sample_rate``.
* The runner may refuse a job (concurrency cap, daily budget). So that a refusal never depends
  on the score, an escalated pair's job is submitted with the same estimate as a kept request's
  (what the next tier's answer would cost), even though its answer is already paid for: the
  admission rule is the same function of load and spend for both kinds.
* Only requests the threshold decides are in the population: an answer cut by the running check
  (early exit), failing the structural checks, or routed by the router stage escalates or is
  kept whatever the threshold, and is not labelled.
* ``handoff`` mode: an escalated request has no full small answer (the next tier continued the
  streamed prefix), and the threshold decides nothing (the running check does). Only kept
  answers are labelled, at ``sample_rate``: a uniform sample of what clients received from the
  small tier, so the state reports a valid bound on their disagreement, and no threshold moves
  (``apply`` must be false there).

The effective threshold is the shared state's raw threshold when ``apply`` is set and a state
exists, read from the store at start and again at most every ``refresh_seconds`` — in the
background: a request never waits on the store, it uses the copy at hand.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.selfcal import CalibrationState, SelfCalibrationStore
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from routers.cascade.config import CascadeStrategy, CascadeTier
from routers.cascade.selfcal.config import SelfCalibration
from routers.cascade.selfcal.judges.base import Answer
from routers.cascade.selfcal.judges.build import build_judge
from routers.cascade.selfcal.labeller import NextAnswer as NextAnswer  # re-exported: the cascade's strategy uses it
from routers.cascade.selfcal.labeller import ShadowLabeller, reference_output_tokens
from routers.cascade.selfcal.recalibrate import TierTarget, configured_raw_threshold, recalibrate

logger = logging.getLogger(__name__)


class TierCalibrator:
    """The self-calibration of one cascade tier (one per tier per strategy instance)."""

    def __init__(self, target: TierTarget, resources: GatewayResources, next_tier: CascadeTier,
                 next_answer: NextAnswer) -> None:
        self.target = target
        self.config: SelfCalibration = target.config
        self.resources = resources
        self.judge = build_judge(self.config.judge)
        self.random = random.Random()  # its own stream: a test may seed it
        self.drift_alarms = 0  # drift states this replica stored (the service counts every replica's)
        self._next_tier = next_tier
        self.labeller = ShadowLabeller(target.model, target.tier, self.judge, resources,
                                       max_concurrent=self.config.max_concurrent,
                                       budget_usd_per_day=self.config.budget_usd_per_day, next_answer=next_answer,
                                       after_label=self._after_label)
        self._state: CalibrationState | None = None
        self._fetched_at = -math.inf
        self._refresh: asyncio.Task[None] | None = None

    @property
    def store(self) -> SelfCalibrationStore | None:
        return self.resources.selfcal_store

    @property
    def state(self) -> CalibrationState | None:
        """The shared state as this replica last read or stored it."""
        return self._state

    async def load(self) -> None:
        """Read the shared state once, at policy load (a store that is down only delays it)."""
        await self._read_state()

    def threshold(self) -> float | None:
        """The raw threshold that decides now, or None: the configured threshold decides (also
        when the gateway offers no shadow runner or no store: the cascade runs as configured)."""
        if not self.config.apply or self.store is None or self.resources.shadow is None:
            return None
        if self._refresh is None and time.monotonic() - self._fetched_at >= self.config.refresh_seconds:
            self._refresh = asyncio.get_running_loop().create_task(self._read_state())
        return self._state.threshold if self._state is not None else None

    async def _read_state(self) -> None:
        store = self.store
        try:
            if store is not None:
                self._adopt(await store.get_state(self.target.model, self.target.tier))
        except Exception as exc:  # the store is the service's; a failure must never reach a request
            logger.warning("self-calibration state of %s tier %d not read: %s", self.target.model,
                           self.target.tier, exc)
        finally:
            self._fetched_at = time.monotonic()
            self._refresh = None

    def _adopt(self, state: CalibrationState | None) -> None:
        if state is not None and self._state is not None and state.version < self._state.version:
            return  # a slower read than our own write: keep the newer
        self._state = state

    def keeps(self, ctx: RequestContext, raw: float, calibrated: float, configured: float) -> bool:
        """The tier's decision: the shared raw threshold when one applies, else the configured one
        on the (calibrated) score. The record says when the shared one decided."""
        shared = self.threshold()
        if shared is None or self._state is None:
            return calibrated >= configured
        ctx.record.extra.setdefault("selfcal", []).append(
            {"tier": self.target.tier, "raw_score": raw, "threshold": shared, "version": self._state.version})
        return raw >= shared

    def sampled(self) -> bool:
        return self.random.random() < self.config.sample_rate

    def next_cost_usd(self, request: ChatRequestView, prompt_tokens: int, completion_tokens: int) -> float:
        """What the next tier's answer to this request may cost (the shadow budget's admission)."""
        tier = self._next_tier
        names = [tier.backend]
        if tier.backend.startswith("model:"):
            delegate = self.resources.strategies.get(tier.backend.removeprefix("model:"))
            names = delegate.delegates()[0] if delegate is not None else []
        output = reference_output_tokens(request.params.max_tokens, tier.max_tokens, completion_tokens)
        prices = self.resources.prices
        return sum(prices[name].cost(prompt_tokens, output) for name in names if name in prices)

    def label(self, request: ChatRequestView, ctx: RequestContext, small: Answer, score: float, *, kept: bool,
              large: Answer | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Submit the job that labels this request (the coin was already drawn). ``large`` is the
        next tier's answer when the client path has it (an escalated pair), else the job asks for
        it. Never waits: the job runs in the runner, and the client's record says what happened."""
        # The same estimate for both kinds: see "Sampling design" above.
        self.labeller.submit(request, ctx, small, score, kept=kept, large=large,
                             next_cost_usd=self.next_cost_usd(request, prompt_tokens, completion_tokens))

    def unlabelled(self, ctx: RequestContext, reason: str) -> None:
        ctx.record.extra.setdefault("shadow", []).append(
            {"tier": self.target.tier, "kind": "pair", "scheduled": False, "reason": reason})

    async def _after_label(self, store: SelfCalibrationStore, count: int) -> dict[str, Any] | None:
        state = await self._maybe_refit(store, count)
        if state is None:
            return None
        return {"state": {"version": state.version, "threshold": state.threshold, "reason": state.reason}}

    async def _maybe_refit(self, store: SelfCalibrationStore, count: int) -> CalibrationState | None:
        if count % self.config.refit_every == 0:
            state = await recalibrate(store, self.target)
        elif count % self.config.drift.check_every == 0:
            state = await recalibrate(store, self.target, drift_only=True)
        else:
            return None
        if state is not None:
            self._adopt(state)
            self._fetched_at = time.monotonic()
            if state.reason == "drift":
                self.drift_alarms += 1
        return state


@dataclass(frozen=True, slots=True)
class PendingPair:
    """An escalated, sampled request waiting for the next tier's answer to be labelled."""

    calibrator: TierCalibrator
    small: Answer
    score: float
    prompt_tokens: int
    completion_tokens: int

    def answered(self, request: ChatRequestView, ctx: RequestContext, large: Answer | None) -> None:
        """Label the pair; ``large`` None (the next answer was cut short): the job asks for it whole."""
        self.calibrator.label(request, ctx, self.small, self.score, kept=False, large=large,
                              prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


def build_calibrators(public_name: str, config: CascadeStrategy, resources: GatewayResources,
                      next_answer: Callable[[int], NextAnswer]) -> dict[int, TierCalibrator]:
    """A calibrator per self-calibrating tier; ``next_answer(i)`` asks tier ``i`` for a whole answer."""
    calibrators: dict[int, TierCalibrator] = {}
    for index, tier in enumerate(config.tiers[:-1]):
        if tier.self_calibration is None:
            continue
        target = TierTarget.of(public_name, index, tier.self_calibration, configured_raw_threshold(tier),
                               kept_only=config.mode == "handoff")
        calibrators[index] = TierCalibrator(target, resources, config.tiers[index + 1], next_answer(index + 1))
    return calibrators
