"""The cascade's optional first stage: a learned pre-call router sends obvious cases straight on.

The router (``routers.learned``, trained by ``slm-gateway router train``) estimates
P(large model needed) from the request text alone. Within ``[low, high)`` the answer is
genuinely uncertain and the cascade runs; outside that band the router's word is taken, which
saves the small model's doomed attempt on hard requests and the confidence bookkeeping on easy
ones. The decision is recorded in ``record.extra`` and the ``x-slm-gateway-router-score`` header.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.core.strategy import ChatRequestView, RequestContext
from routers.cascade.config import RouterStage

if TYPE_CHECKING:
    from routers.learned.router import LearnedRouter

ROUTER_SCORE_HEADER = "x-slm-gateway-router-score"


class Shortcut(Enum):
    FIRST_TIER = "first_tier"  # obviously easy: the small model answers, no confidence check
    CASCADE = "cascade"  # uncertain: run the tiers
    LAST_TIER = "last_tier"  # obviously hard: straight to the final tier


class PreRouter:
    def __init__(self, settings: RouterStage) -> None:
        self.settings = settings
        self._router: LearnedRouter | None = None

    async def load(self) -> None:
        from routers.learned.router import LearnedRouter

        # Loading the embedder and its first forward pass take ~1 s: keep the event loop free.
        self._router = await asyncio.to_thread(LearnedRouter.load, Path(self.settings.router_dir).expanduser())
        await asyncio.to_thread(self._router.score, "warm-up")

    @property
    def loaded(self) -> bool:
        return self._router is not None

    async def decide(self, request: ChatRequestView, ctx: RequestContext) -> Shortcut:
        if self._router is None:
            return Shortcut.CASCADE
        from routers.learned.strategy import routing_text

        score = await asyncio.to_thread(self._router.score, routing_text(request, self.settings.embed))
        if score < self.settings.low:
            shortcut = Shortcut.FIRST_TIER
        elif score >= self.settings.high:
            shortcut = Shortcut.LAST_TIER
        else:
            shortcut = Shortcut.CASCADE
        ctx.record.extra["router_score"] = round(score, 6)
        ctx.record.extra["router_decision"] = shortcut.value
        ctx.response_headers[ROUTER_SCORE_HEADER] = f"{score:.4f}"
        return shortcut
