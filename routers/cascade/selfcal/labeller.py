"""The shadow job that labels one request: ask the reference for its answer off the client's
path, judge the pair, store the :class:`~gateway.core.selfcal.Label`.

Shared by a self-calibrating cascade tier (:mod:`.sampler`, which refits its threshold after a
label) and a static route's monitor-only shadowing (``routers/static/``, which only labels). The
coin is drawn by the caller: :meth:`ShadowLabeller.submit` labels the request it is given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.core.selfcal import ESCALATE_ALL, Label, SelfCalibrationStore
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from routers.cascade.selfcal.judges.base import Answer, Judge

SHADOW_PURPOSE = "shadow"
UNSIZED_ANSWER_FACTOR = 4  # no max_tokens anywhere: the reference answer is estimated at 4x the small one (+64)

NextAnswer = Callable[[ChatRequestView, RequestContext], Awaitable[Answer]]
# Called with the store and the (model, tier)'s label count after each stored label; what it
# returns is merged into the shadow record's ``extra["selfcal"]`` (a cascade's refit outcome).
AfterLabel = Callable[[SelfCalibrationStore, int], Awaitable[dict[str, Any] | None]]


def reference_output_tokens(requested: int | None, cap: int | None, completion_tokens: int) -> int:
    """How long the reference's answer may be, for the shadow budget's admission estimate."""
    output = requested or cap or UNSIZED_ANSWER_FACTOR * completion_tokens + 64
    return min(output, cap) if cap is not None else output


class ShadowLabeller:
    """Submits the shadow jobs that label one (model, tier)'s answers against a reference."""

    def __init__(self, model: str, tier: int, judge: Judge, resources: GatewayResources, *, max_concurrent: int,
                 budget_usd_per_day: float, next_answer: NextAnswer, after_label: AfterLabel | None = None) -> None:
        self.model, self.tier, self.judge = model, tier, judge
        self.resources = resources
        self.max_concurrent, self.budget_usd_per_day = max_concurrent, budget_usd_per_day
        self._next_answer = next_answer
        self._after_label = after_label

    def submit(self, request: ChatRequestView, ctx: RequestContext, small: Answer, score: float, *, kept: bool,
               large: Answer | None, next_cost_usd: float) -> None:
        """Submit the job that labels this request. ``large`` is the reference's answer when the
        client path has it (a cascade's escalated pair), else the job asks for it;
        ``next_cost_usd`` is what asking for it may cost. Never waits: the job runs in the runner,
        and the client's record (``extra["shadow"]``) says what happened."""
        entry: dict[str, Any] = {"tier": self.tier, "kind": "shadow" if large is None else "pair"}
        ctx.record.extra.setdefault("shadow", []).append(entry)
        runner, store = self.resources.shadow, self.resources.selfcal_store
        if runner is None or store is None:
            entry.update(scheduled=False, reason="unavailable")
            return
        estimate = next_cost_usd + self.judge.estimated_cost_usd(request, small, large or small, self.resources.prices)
        job = self._job(request, small, score, kept, large, ctx.record.request_id, store)
        scheduled = runner.submit(self.model, job, max_concurrent=self.max_concurrent,
                                  budget_usd_per_day=self.budget_usd_per_day, estimated_cost_usd=estimate)
        entry["scheduled"] = scheduled
        if not scheduled:
            entry["reason"] = "refused"  # the runner's cap or budget

    def _job(self, request: ChatRequestView, small: Answer, score: float, kept: bool, given: Answer | None,
             request_id: str, store: SelfCalibrationStore) -> Callable[[RequestContext], Awaitable[None]]:
        async def job(ctx: RequestContext) -> None:
            info: dict[str, Any] = {"tier": self.tier, "request_id": request_id, "kept": kept}
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
            label = Label(model=self.model, tier=self.tier, score=finite, kept=kept, agree=verdict.agree,
                          judge=self.judge.type, small_text=small.as_text(), large_text=large.as_text(),
                          request_id=request_id, created_at=time.time(), detail=verdict.detail)
            count = await store.add_label(label)
            info.update(agree=verdict.agree, judge=self.judge.type, labels=count)
            if self._after_label is not None:
                info.update(await self._after_label(store, count) or {})

        return job
