"""The ``learned`` strategy: a pre-call router picks the weak or the strong target per request.

The request text (last user turn, or the whole conversation) is embedded and scored by a
:class:`LearnedRouter`; ``score >= threshold`` sends it to ``strong``, else to ``weak``. The
decision is recorded: ``ctx.record.extra["router_score"]`` / ``["router_threshold"]``, the route,
and the ``x-slm-gateway-router-score`` response header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from gateway.core.config import split_target
from gateway.core.errors import UpstreamUnavailableError
from gateway.core.strategy import (
    ChatRequestView,
    GatewayResources,
    RequestContext,
    Strategy,
    StrategyEvent,
)
from policies.loader import PolicyError
from routers.learned.config import LearnedStrategy
from routers.learned.router import LearnedRouter
from routers.targets import Target, answer_from, resolve_target, target_ready

SCORE_HEADER = "x-slm-gateway-router-score"
ROUTE_HEADER = "x-slm-gateway-router-target"


def routing_text(request: ChatRequestView, embed: Literal["last_user", "conversation"]) -> str:
    if embed == "last_user":
        return request.last_user_text()
    # The embedder truncates at 256 tokens from the start; put the latest turn first so a long
    # history cannot push it out of the window.
    turns = [f"{m.role}: {m.content}" for m in request.messages if m.content]
    return "\n".join(reversed(turns))


class Learned(Strategy[LearnedStrategy]):
    def __init__(self, public_name: str, config: LearnedStrategy, resources: GatewayResources) -> None:
        super().__init__(public_name, config, resources)
        self.router: LearnedRouter | None = None  # loaded by start()
        self.weak_target = Target("backend", split_target(config.weak)[1])
        self.strong_target = Target("backend", split_target(config.strong)[1])

    async def start(self) -> None:
        problems: list[str] = []
        self.weak_target = self._resolve(self.config.weak, problems)
        self.strong_target = self._resolve(self.config.strong, problems)
        directory = Path(self.config.router_dir).expanduser()
        try:
            # Loading torch weights and the first forward pass take ~1 s: keep the loop free.
            self.router = await asyncio.to_thread(LearnedRouter.load, directory)
            await asyncio.to_thread(self.router.score, "warm-up")
        except (ValueError, FileNotFoundError) as exc:
            problems.append(f"router_dir: {exc}")
        if problems:
            raise PolicyError(f"models.{self.public_name}", problems)

    def _resolve(self, raw: str, problems: list[str]) -> Target:
        target = resolve_target(raw, self.resources)
        if target is None:
            problems.append(f"target {raw!r} is neither a backend nor a model of this policy")
            return Target("backend", split_target(raw)[1])
        if target.kind == "model" and target.name == self.public_name:
            problems.append(f"target {raw!r} delegates back to {self.public_name!r}")
        return target

    def delegates(self) -> tuple[list[str], list[str]]:
        backends, models = super().delegates()
        for raw in self.config.referenced_targets():
            target = resolve_target(raw, self.resources)
            if target is not None:
                (backends if target.kind == "backend" else models).append(target.name)
        return backends, models

    @property
    def threshold(self) -> float:
        if self.config.threshold is not None:
            return self.config.threshold
        return self.router.threshold if self.router is not None else 0.5

    def ready(self) -> bool:
        if self.router is None:
            return False
        return all(self._target_ready(t) for t in (self.weak_target, self.strong_target))

    def _target_ready(self, target: Target) -> bool:
        return target_ready(target, self.resources)

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        router = self.router
        if router is None:
            raise UpstreamUnavailableError(f"model {self.public_name!r}: learned router not loaded")
        score = await asyncio.to_thread(router.score, routing_text(request, self.config.embed))
        threshold = self.threshold
        target = self.strong_target if router.needs_strong(score, threshold) else self.weak_target
        ctx.record.extra["router_score"] = round(score, 6)
        ctx.record.extra["router_threshold"] = threshold
        ctx.response_headers[SCORE_HEADER] = f"{score:.4f}"
        ctx.response_headers[ROUTE_HEADER] = "strong" if target is self.strong_target else "weak"
        async for event in answer_from(target, request, ctx, self.resources):
            yield event
