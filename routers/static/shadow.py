"""Monitor-only shadowing of a static route (``shadow:`` in its config, docs/cascade.md).

A sampled answer — the coin drawn once the answer is whole and with the client — is also asked
of the reference backend in a shadow job (the cascade's :class:`ShadowLabeller`: off the
client's path, bounded in concurrency and budget, recorded as a shadow call with ``used:
false``), the pair is judged, and the label is stored as tier 0, ``kept`` (the route serves
every answer it gives). Every answer is in the population, so the labels are a uniform sample of
what clients received, and the report's agreement interval is valid for the route as a whole.
No threshold exists and nothing is recalibrated.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from gateway.core.backend import GenerationDone, GenerationEvent, TokenChunk
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from routers.cascade.scorers import mean_logprob
from routers.cascade.selfcal.judges.base import Answer
from routers.cascade.selfcal.judges.build import build_judge
from routers.cascade.selfcal.labeller import SHADOW_PURPOSE, ShadowLabeller, reference_output_tokens
from routers.static.config import StaticShadow

ROUTE_TIER = 0  # a static route is labelled as a one-tier cascade's judged tier
UNSCORED = 0.0  # the label's score when the answer carries no logprobs (the client asked for none)


class RouteShadow:
    """The shadowing of one static route (one per strategy instance)."""

    def __init__(self, public_name: str, config: StaticShadow, resources: GatewayResources) -> None:
        self.config = config
        self.resources = resources
        self.random = random.Random()  # its own stream: a test may seed it
        self.labeller = ShadowLabeller(public_name, ROUTE_TIER, build_judge(config.judge), resources,
                                       max_concurrent=config.max_concurrent,
                                       budget_usd_per_day=config.budget_usd_per_day,
                                       next_answer=self._reference_answer)

    def sampled(self) -> bool:
        return self.random.random() < self.config.sample_rate

    async def watch(self, request: ChatRequestView, ctx: RequestContext, events: AsyncIterator[GenerationEvent]
                    ) -> AsyncIterator[GenerationEvent]:
        """``events`` passed through unchanged; once the answer is whole (its ``GenerationDone``
        comes, every token already yielded to the client), the coin is drawn and a sampled answer
        labelled, before the done event is passed on."""
        chunks: list[TokenChunk] = []
        async for event in events:
            if isinstance(event, TokenChunk):
                chunks.append(event)
            elif self.sampled():
                self.label(request, ctx, chunks, event)
            yield event

    def label(self, request: ChatRequestView, ctx: RequestContext, chunks: list[TokenChunk],
              done: GenerationDone) -> None:
        """Submit the job that labels this answer; never waits (the client's record says what happened)."""
        logprobs = [logprob for chunk in chunks for logprob in chunk.logprobs]
        score = mean_logprob(logprobs) if logprobs else UNSCORED
        self.labeller.submit(request, ctx, Answer.of(chunks), score, kept=True, large=None,
                             next_cost_usd=self._reference_cost_usd(request, done))

    def _reference_cost_usd(self, request: ChatRequestView, done: GenerationDone) -> float:
        price = self.resources.prices.get(self.config.backend)
        if price is None:
            return 0.0
        output = reference_output_tokens(request.params.max_tokens, None, done.completion_tokens)
        return price.cost(done.prompt_tokens, output)

    async def _reference_answer(self, request: ChatRequestView, ctx: RequestContext) -> Answer:
        """The reference's whole answer to the same request, in the shadow job (``ctx`` is its record)."""
        events = ctx.call_chat(self.config.backend, request.messages, request.params, purpose=SHADOW_PURPOSE)
        return Answer.of([event async for event in events if isinstance(event, TokenChunk)])
