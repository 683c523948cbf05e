"""``cascade``: the small model answers first; low confidence escalates to the next tier.

Two modes:

* ``buffer`` — each non-final tier's answer is generated in full (or until early exit
  makes escalation certain), scored, and either returned or discarded (its call is recorded
  with ``used: false``) before the next tier runs.
* ``handoff`` — tokens stream to the client while each tier's running check holds; when it
  fails mid-answer, the next tier *continues the answer so far* (assistant-prefix
  continuation over ``/v1/completions``), so the client receives one coherent answer. Needs
  a first tier that can render its chat template and next tiers that can continue a prefix
  (in-process, vLLM, slm-gateway); otherwise the request runs in ``buffer`` mode and the
  record says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from gateway.core.backend import (
    CompletionPrompt,
    GenerationDone,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
    unsupported_parameter,
)
from gateway.core.continuation import render_chat_text, split_final
from gateway.core.errors import InvalidRequestError, UpstreamUnavailableError
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext, Strategy, StrategyEvent
from gateway.core.structured.checks import structural_problem
from gateway.core.structured.tool_calls import merge_tool_fragments
from policies.loader import PolicyError
from routers.cascade.calibration import apply_calibration
from routers.cascade.code import request_structure
from routers.cascade.config import CascadeStrategy, CascadeTier
from routers.cascade.examples import ExamplesCheck
from routers.cascade.monitor import RunningCheck
from routers.cascade.prerouter import PreRouter, Shortcut
from routers.cascade.scorers import SCORERS
from routers.cascade.selfcal.judges.base import Answer
from routers.cascade.selfcal.sampler import NextAnswer, PendingPair, build_calibrators

CONFIDENCE_HEADER = "x-slm-gateway-confidence"
# A tier that refuses these (a schema it cannot compile) escalates instead of failing the request.
GRAMMAR_PARAMS = frozenset({"response_format", "tools"})


def client_chunk(event: TokenChunk, params: SamplingParams) -> TokenChunk:
    """The chunk as the client asked for it: we may have requested more logprobs than they did."""
    if not params.logprobs:
        return replace(event, logprobs=())
    n = params.top_logprobs
    return replace(event, logprobs=tuple(replace(t, top=t.top[:n]) for t in event.logprobs))


class Cascade(Strategy[CascadeStrategy]):
    def __init__(self, public_name: str, config: CascadeStrategy, resources: GatewayResources) -> None:
        super().__init__(public_name, config, resources)
        self.prerouter = PreRouter(config.router) if config.router is not None else None
        # Self-calibrating tiers (routers/cascade/selfcal/), by tier index.
        self.calibrators = build_calibrators(public_name, config, resources, self._shadow_answerer)
        self.examples = ExamplesCheck()  # tiers with ``structural: python_examples``

    async def start(self) -> None:
        for calibrator in self.calibrators.values():
            await calibrator.load()
        if self.prerouter is not None:
            try:
                await self.prerouter.load()
            except (ValueError, FileNotFoundError) as exc:
                raise PolicyError(f"models.{self.public_name}", [f"router.router_dir: {exc}"]) from None

    def ready(self) -> bool:
        if self.prerouter is not None and not self.prerouter.loaded:
            return False
        backends = self.config.tier_backends()  # a judge's backend is off the client's path
        models = self.config.referenced_models()
        return all(self.resources.backend(b).ready for b in backends) and \
            all(self.resources.strategies[m].ready() for m in models)

    def _attempt_params(self, request: ChatRequestView, tier: CascadeTier, used_tokens: int = 0) -> SamplingParams:
        params = request.params
        max_tokens = params.max_tokens
        if max_tokens is not None:
            max_tokens = max(1, max_tokens - used_tokens)
        if tier.max_tokens is not None:
            max_tokens = min(max_tokens or tier.max_tokens, tier.max_tokens)
        return replace(params, max_tokens=max_tokens, logprobs=True,
                       top_logprobs=max(params.top_logprobs, self.config.top_logprobs))

    def _score(self, tier: CascadeTier, logprobs: list[TokenLogprob]) -> tuple[float, float]:
        """(raw score, calibrated score): self-calibration works on the raw scale."""
        raw = SCORERS[tier.scorer](logprobs)
        return raw, apply_calibration(tier.calibration, raw)

    def _keeps(self, index: int, ctx: RequestContext, raw: float, score: float) -> bool:
        tier, calibrator = self.config.tiers[index], self.calibrators.get(index)
        assert tier.threshold is not None
        return calibrator.keeps(ctx, raw, score, tier.threshold) if calibrator else score >= tier.threshold

    def _shadow_answerer(self, index: int) -> NextAnswer:
        async def answer(request: ChatRequestView, ctx: RequestContext) -> Answer:
            """Tier ``index``'s whole answer, in a shadow job (``ctx`` is the shadow record)."""
            tier = self.config.tiers[index]
            if index == len(self.config.tiers) - 1:
                events: AsyncIterator[StrategyEvent | GenerationDone] = self._final(tier, request, ctx)
            else:
                events = ctx.call_chat(tier.backend, request.messages, self._attempt_params(request, tier))
            return Answer.of([event async for event in events if isinstance(event, TokenChunk)])

        return answer

    async def _well_formed(self, tier: CascadeTier, request: ChatRequestView, chunks: list[TokenChunk],
                           ctx: RequestContext) -> bool:
        """The structural checks: the answer honours the request's tools / response_format (always),
        the tier's code check (``structural``). A failure escalates whatever the score."""
        text = "".join(c.text for c in chunks)
        reason: str | None = None
        if request.has_tools or request.has_response_format:
            calls: list[dict[str, Any]] = []
            for chunk in chunks:
                merge_tool_fragments(calls, chunk.tool_calls)
            reason = structural_problem(request.params.extra, text, calls)
        if reason is None and tier.structural is not None:
            # A continued assistant message (a prefill) is the start of the answer: judge the whole
            # answer, and read the request's code from the prefill too (it may hold the only copy).
            prefix = split_final(request.messages, request.params.extra)[1]
            request_text = f"{request.last_user_text()}\n{prefix}" if prefix else request.last_user_text()
            structure = request_structure(request_text, prefix + text)
            reason = None if structure.ok else structure.reason
            if reason is None and tier.structural == "python_examples":
                reason = await self.examples.problem(request_text, prefix + text)
        if reason is not None:
            ctx.record.extra.setdefault("structural", []).append({"tier": tier.backend, "reason": reason})
        return reason is None

    def _handoff_blocker(self) -> str | None:
        tiers = self.config.tiers
        for tier in tiers[1:]:
            if not self.resources.backend(tier.backend).supports_prefix_continuation:
                return f"backend {tier.backend!r} cannot continue an assistant prefix"
        return None

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        first = self.config.tiers[0].backend
        missing = unsupported_parameter(self.resources.backend(first).capabilities, request.params)
        if missing is not None:
            # The small tier cannot honour the request (tools / response_format / logit_bias...):
            # the last tier answers it, and the record says why the cascade was skipped.
            ctx.record.extra["cascade_skipped"] = {"tier": first, "reason": f"unsupported:{missing}"}
            async for event in self._direct(request, ctx, Shortcut.LAST_TIER):
                yield event
            return
        if self.prerouter is not None:
            if not self.prerouter.loaded:
                raise UpstreamUnavailableError(f"model {self.public_name!r}: cascade router not loaded")
            shortcut = await self.prerouter.decide(request, ctx)
            if shortcut is not Shortcut.CASCADE:
                async for event in self._direct(request, ctx, shortcut):
                    yield event
                return
        if self.config.mode == "handoff":
            # A tool call or schema answer is judged whole: a hand-off would stream what may fail it.
            blocker = "tools / response_format are checked on the whole answer" \
                if request.has_tools or request.has_response_format else self._handoff_blocker()
            renderer = self.resources.backend(first)
            prompt = None if blocker else await render_chat_text(renderer, request.messages, request.params.extra)
            if blocker is None and prompt is None:
                blocker = f"backend {self.config.tiers[0].backend!r} cannot render its chat template"
            if prompt is not None:
                async for event in self._handoff(request, ctx, prompt):
                    yield event
                return
            ctx.record.extra["handoff_fallback"] = f"buffer: {blocker}"
        async for event in self._buffer(request, ctx):
            yield event

    async def _direct(
        self, request: ChatRequestView, ctx: RequestContext, shortcut: Shortcut
    ) -> AsyncIterator[StrategyEvent]:
        """The router decided: one tier answers, streamed as it comes, with no confidence check."""
        tier = self.config.tiers[0] if shortcut is Shortcut.FIRST_TIER else self.config.tiers[-1]
        ctx.set_route(tier.backend)
        # Sent to the large model without trying the small one: counted as escalated, so the
        # share escalated stays "share of requests the large model answered".
        ctx.record.escalated = shortcut is Shortcut.LAST_TIER
        async for event in self._final(tier, request, ctx):
            yield event

    async def _final(self, tier: CascadeTier, request: ChatRequestView, ctx: RequestContext
                     ) -> AsyncIterator[StrategyEvent]:
        """The last tier's answer, streamed as it comes: one backend call, or a delegate model's
        answer (``model:NAME``, e.g. speculative decoding of the large model)."""
        if tier.backend.startswith("model:"):
            async for answered in self.resources.strategies[tier.backend.removeprefix("model:")].chat(request, ctx):
                yield answered
            return
        async for event in ctx.call_chat(tier.backend, request.messages, request.params):
            yield _answer(event) if isinstance(event, GenerationDone) else event

    async def _buffer(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        route: list[str] = []
        pending: PendingPair | None = None  # an escalated pair to label once the next answer is whole
        for index, tier in enumerate(self.config.tiers):
            route.append(tier.backend)
            ctx.set_route(">".join(route))
            if index == len(self.config.tiers) - 1:
                ctx.record.escalated = index > 0
                final: list[TokenChunk] = []
                async for answered in self._final(tier, request, ctx):
                    if pending is not None and isinstance(answered, TokenChunk):
                        final.append(answered)
                    elif pending is not None:  # before the answer ends: the generator may not resume
                        pending.answered(request, ctx, Answer.of(final))
                    yield answered
                return
            chunks: list[TokenChunk] = []
            logprobs: list[TokenLogprob] = []
            done: GenerationDone | None = None
            check = RunningCheck(tier.early_exit) if tier.early_exit else None
            stream = ctx.call_chat(tier.backend, request.messages, self._attempt_params(request, tier))
            try:
                async for event in stream:
                    if isinstance(event, GenerationDone):
                        done = event
                        continue
                    chunks.append(event)
                    logprobs.extend(event.logprobs)
                    if check is not None and not all(check.add(t) for t in event.logprobs):
                        break  # escalation is certain: stop generating a doomed answer
            except InvalidRequestError as exc:
                if exc.param not in GRAMMAR_PARAMS:
                    raise
                # This tier cannot enforce the schema (or its grammar hit a dead end): the next
                # tier may (an upstream with its own structured outputs); a client error only if none can.
                ctx.record.extra.setdefault("structural", []).append(
                    {"tier": tier.backend, "reason": f"{exc.param}: {exc.message}"})
                ctx.last_call().used = False
                continue
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            raw, score = self._score(tier, logprobs)
            if index == 0:
                ctx.record.confidence = score
                ctx.response_headers[CONFIDENCE_HEADER] = f"{score:.4f}"
            complete = done is not None and (check is None or check.failed_at is None)
            if pending is not None:
                pending.answered(request, ctx, Answer.of(chunks) if complete else None)
                pending = None
            # Checked only when whole (a cut-off answer is no call yet), recorded whatever the score.
            well_formed = complete and await self._well_formed(tier, request, chunks, ctx)
            calibrator = self.calibrators.get(index)
            if done is not None and well_formed and self._keeps(index, ctx, raw, score):
                ctx.record.escalated = index > 0
                for chunk in chunks:
                    yield client_chunk(chunk, request.params)
                if calibrator is not None and calibrator.sampled():
                    calibrator.label(request, ctx, Answer.of(chunks), raw, kept=True, large=None,
                                     prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)
                yield _answer(done)
                return
            if done is not None and well_formed and calibrator is not None and calibrator.sampled():
                # Escalated on its score alone: both answers will be at hand, labelled at the same rate.
                pending = PendingPair(calibrator, Answer.of(chunks), raw, done.prompt_tokens, done.completion_tokens)
            ctx.last_call().used = False
            if check is not None and check.failed_at is not None:
                exits = ctx.record.extra.setdefault("early_exit", [])
                exits.append({"tier": tier.backend, "at_token": check.failed_at})

    async def _handoff(
        self, request: ChatRequestView, ctx: RequestContext, prompt: str
    ) -> AsyncIterator[StrategyEvent]:
        route: list[str] = []
        prefix = ""
        streamed = 0
        prompt_ids = await self.resources.backend(self.config.tiers[0].backend).tokenize(prompt)
        prompt_tokens: int | None = len(prompt_ids) if prompt_ids is not None else None
        for index, tier in enumerate(self.config.tiers):
            last = index == len(self.config.tiers) - 1
            route.append(tier.backend)
            ctx.set_route(">".join(route))
            params = self._attempt_params(request, tier, streamed)
            if index == 0:
                stream = ctx.call_chat(tier.backend, request.messages, params)
            else:
                stream = ctx.call_completion(tier.backend, CompletionPrompt(text=prompt + prefix), params)
            check = RunningCheck(tier.early_exit) if (tier.early_exit and not last) else None
            logprobs: list[TokenLogprob] = []
            done: GenerationDone | None = None
            try:
                async for event in stream:
                    if isinstance(event, GenerationDone):
                        done = event
                        continue
                    if check is not None and not all(check.add(t) for t in event.logprobs):
                        break  # this token is where confidence failed: the next tier writes it
                    logprobs.extend(event.logprobs)
                    prefix += event.text
                    streamed += len(event.token_ids) or len(event.logprobs) or 1
                    yield client_chunk(event, request.params)
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            raw, confidence = self._score(tier, logprobs)
            if index == 0:
                ctx.record.confidence = confidence
            if done is not None and prompt_tokens is None:
                prompt_tokens = done.prompt_tokens
            calibrator = self.calibrators.get(index)
            if calibrator is not None and calibrator.sampled():
                # Kept: labelled (monitor only). Handed off: no whole small answer exists to judge.
                if done is not None and (check is None or check.failed_at is None):
                    calibrator.label(request, ctx, Answer(prefix), raw, kept=True, large=None,
                                     prompt_tokens=done.prompt_tokens, completion_tokens=streamed)
                else:
                    calibrator.unlabelled(ctx, "handoff: no whole small answer")
            if done is not None and (check is None or check.failed_at is None):
                ctx.record.escalated = index > 0
                yield AnswerDone.of(done, prompt_tokens=prompt_tokens or done.prompt_tokens,
                                     completion_tokens=streamed)
                return
            ctx.record.escalated = True
            at_token = check.failed_at if check is not None else None
            ctx.record.extra.setdefault("handoffs", []).append(
                {"from": tier.backend, "at_token": at_token, "prefix_chars": len(prefix)})


def _answer(done: GenerationDone) -> AnswerDone:
    return AnswerDone.of(done)
