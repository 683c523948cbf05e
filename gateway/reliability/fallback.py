"""``FallbackChain``: answer from the next model when a model fails before its first token.

The runtime wraps every public model in one (with an empty chain when the policy declares
no ``fallbacks`` for it). Order of composition, per request (docs/reliability.md):

1. the model's own strategy runs; each upstream call inside it gets the backend's timeouts,
   retries and circuit breaker (``gateway.reliability.guarded``);
2. if the strategy fails *before yielding anything* with an upstream error (502 / 503 / 504,
   circuit open), the next model of ``fallbacks.<model>`` answers instead — its own strategy,
   not its own fallbacks (no chains of chains, no loops); the response carries
   ``x-slm-gateway-fallback: <model>`` and ``record.fallback`` names it;
3. once a token has been yielded nothing is replayed: a later failure reaches the client as
   an error event followed by ``[DONE]``.

Client errors (400, 404, 429) never fall back: another model would reject the request too,
or the client was told to slow down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from gateway.core.backend import CompletionPrompt, EmbeddingResult, GenerationEvent, SamplingParams
from gateway.core.errors import UpstreamError
from gateway.core.strategy import ChatRequestView, RequestContext, Strategy, StrategyEvent

logger = logging.getLogger(__name__)

FALLBACK_HEADER = "x-slm-gateway-fallback"

EventT = TypeVar("EventT")


def triggers_fallback(exc: BaseException) -> bool:
    """Upstream failures (502 / 503 / 504, circuit open); a client's mistake never does."""
    return isinstance(exc, UpstreamError)


class FallbackChain(Strategy[Any]):
    """Looks like the primary model to the request path (name, config, resources)."""

    def __init__(self, primary: Strategy[Any], fallbacks: Sequence[Strategy[Any]] = ()) -> None:
        super().__init__(primary.public_name, primary.config, primary.resources)
        self.primary = primary
        self.fallbacks = tuple(fallbacks)

    def ready(self) -> bool:
        return self.primary.ready() or any(f.ready() for f in self.fallbacks)

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        async for event in self._chain(ctx, lambda strategy: strategy.chat(request, ctx)):
            yield event

    async def completion(
        self, prompt: CompletionPrompt, params: SamplingParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationEvent]:
        async for event in self._chain(ctx, lambda strategy: strategy.completion(prompt, params, ctx)):
            yield event

    async def embed(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any], ctx: RequestContext
    ) -> EmbeddingResult:
        """No stream to fail before: the primary's upstream error moves on to the next model."""
        candidates = (self.primary, *self.fallbacks)
        for position, strategy in enumerate(candidates):
            try:
                return await strategy.embed(inputs, extra, ctx)
            except UpstreamError:
                if position + 1 >= len(candidates):
                    raise
                ctx.record.fallback = candidates[position + 1].public_name
                ctx.response_headers[FALLBACK_HEADER] = ctx.record.fallback
        raise AssertionError("unreachable")

    async def _chain(
        self, ctx: RequestContext, run: Callable[[Strategy[Any]], AsyncIterator[EventT]]
    ) -> AsyncIterator[EventT]:
        candidates = (self.primary, *self.fallbacks)
        for position, strategy in enumerate(candidates):
            calls_before = len(ctx.record.calls)
            events: AsyncIterator[EventT] | None = None
            try:
                events = run(strategy)
                first = await anext(events)
            except StopAsyncIteration:
                return
            except BaseException as exc:
                if events is not None:
                    await _close(events)
                if position + 1 >= len(candidates) or not triggers_fallback(exc):
                    raise
                for call in ctx.record.calls[calls_before:]:
                    call.used = False  # failed attempt: nothing of it reached the client
                following = candidates[position + 1].public_name
                logger.info("model %s failed before its first token (%s); falling back to %s",
                            strategy.public_name, getattr(exc, "code", type(exc).__name__), following)
                ctx.record.fallback = following
                ctx.response_headers[FALLBACK_HEADER] = following
                continue
            try:
                yield first
                async for event in events:
                    yield event
            finally:
                await _close(events)
            return


async def _close(events: AsyncIterator[Any]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
