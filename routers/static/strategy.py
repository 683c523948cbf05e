"""``static``: every request goes to one backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from gateway.core.backend import CompletionPrompt, EmbeddingResult, GenerationDone, GenerationEvent, SamplingParams
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext, Strategy, StrategyEvent
from routers.static.config import StaticStrategy
from routers.static.shadow import RouteShadow


class Static(Strategy[StaticStrategy]):
    def __init__(self, public_name: str, config: StaticStrategy, resources: GatewayResources) -> None:
        super().__init__(public_name, config, resources)
        self.shadow = RouteShadow(public_name, config.shadow, resources) if config.shadow is not None else None

    def ready(self) -> bool:
        return self.resources.backend(self.config.backend).ready

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        backend = self.config.backend
        ctx.set_route(backend)
        events = ctx.call_chat(backend, request.messages, request.params)
        if self.shadow is not None:
            events = self.shadow.watch(request, ctx, events)
        async for event in events:
            if isinstance(event, GenerationDone):
                yield AnswerDone.of(event)
            else:
                yield event

    async def completion(
        self, prompt: CompletionPrompt, params: SamplingParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationEvent]:
        ctx.set_route(self.config.backend)
        async for event in ctx.call_completion(self.config.backend, prompt, params):
            yield event

    async def embed(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any], ctx: RequestContext
    ) -> EmbeddingResult:
        ctx.set_route(self.config.backend)
        return await ctx.call_embeddings(self.config.backend, inputs, extra)
