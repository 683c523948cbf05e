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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.selfcal import ESCALATE_ALL, CalibrationState, Label, SelfCalibrationStore
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from routers.cascade.config import CascadeStrategy, CascadeTier
from routers.cascade.selfcal.config import SelfCalibration
from routers.cascade.selfcal.judges.base import Answer
from routers.cascade.selfcal.judges.build import build_judge
from routers.cascade.selfcal.recalibrate import TierTarget, configured_raw_threshold, recalibrate

logger = logging.getLogger(__name__)

SHADOW_PURPOSE = "shadow"

NextAnswer = Callable[[ChatRequestView, RequestContext], Awaitable[Answer]]
UNSIZED_ANSWER_FACTOR = 4  # no max_tokens anywhere: the next answer is estimated at 4x the small one (+64)


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
        self._next_answer = next_answer
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
        output = request.params.max_tokens or tier.max_tokens or UNSIZED_ANSWER_FACTOR * completion_tokens + 64
        if tier.max_tokens is not None:
            output = min(output, tier.max_tokens)
        prices = self.resources.prices
        return sum(prices[name].cost(prompt_tokens, output) for name in names if name in prices)

    def label(self, request: ChatRequestView, ctx: RequestContext, small: Answer, score: float, *, kept: bool,
              large: Answer | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Submit the job that labels this request (the coin was already drawn). ``large`` is the
        next tier's answer when the client path has it (an escalated pair), else the job asks for
        it. Never waits: the job runs in the runner, and the client's record says what happened."""
        entry: dict[str, Any] = {"tier": self.target.tier, "kind": "shadow" if large is None else "pair"}
        ctx.record.extra.setdefault("shadow", []).append(entry)
        runner, store = self.resources.shadow, self.store
        if runner is None or store is None:
            entry.update(scheduled=False, reason="unavailable")
            return
        # The same estimate for both kinds: see "Sampling design" above.
        estimate = self.next_cost_usd(request, prompt_tokens, completion_tokens) + \
            self.judge.estimated_cost_usd(request, small, large or small, self.resources.prices)
        job = self._job(request, small, score, kept, large, ctx.record.request_id, store)
        scheduled = runner.submit(self.target.model, job, max_concurrent=self.config.max_concurrent,
                                  budget_usd_per_day=self.config.budget_usd_per_day, estimated_cost_usd=estimate)
        entry["scheduled"] = scheduled
        if not scheduled:
            entry["reason"] = "refused"  # the runner's cap or budget

    def unlabelled(self, ctx: RequestContext, reason: str) -> None:
        ctx.record.extra.setdefault("shadow", []).append(
            {"tier": self.target.tier, "kind": "pair", "scheduled": False, "reason": reason})

    def _job(self, request: ChatRequestView, small: Answer, score: float, kept: bool, given: Answer | None,
             request_id: str, store: SelfCalibrationStore) -> Callable[[RequestContext], Awaitable[None]]:
        async def job(ctx: RequestContext) -> None:
            info: dict[str, Any] = {"tier": self.target.tier, "request_id": request_id, "kept": kept}
            ctx.record.extra["selfcal"] = info
            large = given
            if large is None:
                try:
                    large = await self._next_answer(request, ctx)
                finally:
                    for call in ctx.record.calls:
                        call.used, call.purpose = False, SHADOW_PURPOSE
            verdict = await self.judge.judge(request, small, large, ctx)
            # An answer with no tokens scores -inf: escalated by any threshold; stored finite (JSON).
            finite = score if math.isfinite(score) else -ESCALATE_ALL
            label = Label(model=self.target.model, tier=self.target.tier, score=finite, kept=kept,
                          agree=verdict.agree, judge=self.judge.type, small_text=small.as_text(),
                          large_text=large.as_text(), request_id=request_id, created_at=time.time(),
                          detail=verdict.detail)
            count = await store.add_label(label)
            info.update(agree=verdict.agree, judge=self.judge.type, labels=count)
            state = await self._maybe_refit(store, count)
            if state is not None:
                info["state"] = {"version": state.version, "threshold": state.threshold, "reason": state.reason}

        return job

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
