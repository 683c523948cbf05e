"""``static``: every request goes to one backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.core.backend import CompletionPrompt, GenerationDone, GenerationEvent, SamplingParams
from gateway.core.strategy import AnswerDone, ChatRequestView, RequestContext, Strategy, StrategyEvent
from policies.strategies import StaticStrategy
from routers.registry import register_strategy


@register_strategy("static")
class Static(Strategy[StaticStrategy]):
    def ready(self) -> bool:
        return self.resources.backend(self.config.backend).ready

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        backend = self.config.backend
        ctx.set_route(backend)
        async for event in ctx.call_chat(backend, request.messages, request.params):
            if isinstance(event, GenerationDone):
                yield AnswerDone(event.finish_reason, event.prompt_tokens, event.completion_tokens, event.model)
            else:
                yield event

    async def completion(
        self, prompt: CompletionPrompt, params: SamplingParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationEvent]:
        ctx.set_route(self.config.backend)
        async for event in ctx.call_completion(self.config.backend, prompt, params):
            yield event
