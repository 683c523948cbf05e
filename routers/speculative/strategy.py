"""``speculative``: drafts proposed cheaply, verified by the target (docs/speculative.md).

Three ways to verify, chosen at policy load from what the target backend offers:

* ``local`` — the target has an in-process TokenScorer: one batched pass per round over the
  drafts (:class:`~routers.speculative.verifiers.LocalVerifier`).
* ``remote`` — the target returns prompt logprobs (vLLM, another slm-gateway): one
  ``/v1/completions`` call per round through the backend itself.
* ``predicted`` — a target that can only take hints (cloud APIs): the draft's whole answer
  goes out as OpenAI's ``prediction`` (:mod:`.predicted`).

Everything goes through the :class:`~gateway.core.backend.Backend` interface; the adaptive
controller (:mod:`.controller`) and its measured costs are shared by the strategy's requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.core.backend import (
    Backend,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    TokenScorer,
)
from gateway.core.continuation import render_chat_text
from gateway.core.detokenize import StopMatcher
from gateway.core.errors import InvalidRequestError, UnsupportedParameterError, UpstreamError
from gateway.core.strategy import AnswerDone, ChatRequestView, RequestContext, Strategy, StrategyEvent
from gateway.core.structured.grammar import Constraint, GrammarCompiler, compile_constraint
from policies.loader import PolicyError
from routers.speculative.accounting import record_speculation
from routers.speculative.calibration import calibrate_local, calibrate_remote
from routers.speculative.config import BackendDraft, SpeculativeStrategy
from routers.speculative.constrained import (
    ConstrainedDrafter,
    ConstrainedGeneration,
    ConstrainedModelDrafter,
    ConstrainedVerifier,
)
from routers.speculative.controller import Controller
from routers.speculative.drafters import Drafter, ModelDrafter, NgramDrafter
from routers.speculative.generation import Decoding, Generation
from routers.speculative.predicted import predicted_answer
from routers.speculative.rounds import speculative_rounds
from routers.speculative.verifiers import LocalVerifier, RemoteVerifier, Verifier
from routers.speculative.vocab import remote_vocabulary_matches

Mode = Literal["local", "remote", "predicted"]


@dataclass(frozen=True, slots=True)
class _Finished:
    finish: str
    prompt_tokens: int
    completion_tokens: int


class Speculative(Strategy[SpeculativeStrategy]):
    mode: Mode = "local"
    _scorer: TokenScorer | None = None  # tokenizer and detokenizer of the token ids (target's or draft's)
    _target_scorer: TokenScorer | None = None
    _draft_scorers: dict[str, TokenScorer] | None = None
    _controller: Controller | None = None
    _calibration: asyncio.Lock | None = None
    _vocabulary_checked = True

    # --- policy-load time -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except ValueError as exc:
            raise PolicyError(f"models.{self.public_name}", [str(exc)]) from None

    async def _start(self) -> None:
        config = self.config
        target = self.resources.backend(config.target)
        self._target_scorer = target.token_scorer()
        self.mode = self._choose_mode(target)
        self._calibration = asyncio.Lock()
        if self.mode == "predicted":
            if not config.draft_backends():
                raise ValueError("predicted mode sends a draft model's answer: give a {backend: NAME} drafter")
            return
        self._draft_scorers = {name: self._draft_scorer(name) for name in config.draft_backends()}
        names = [d.backend if isinstance(d, BackendDraft) else "ngram" for d in config.drafters()]
        self._controller = Controller(config.adaptive, config.max_k, None if config.adaptive_k else config.k, names)
        if self._target_scorer is not None:
            self._scorer = self._target_scorer
            for name, scorer in self._draft_scorers.items():
                if scorer.vocabulary_id != self._target_scorer.vocabulary_id:
                    raise ValueError(
                        f"draft {name!r} and target {target.name!r} do not share a vocabulary "
                        f"({scorer.vocabulary_id!r} vs {self._target_scorer.vocabulary_id!r}): speculative "
                        "decoding needs the same token ids")
            return
        if not self._draft_scorers:
            raise ValueError(f"remote verification by {target.name!r} needs a {{backend: NAME}} drafter: its "
                             "tokenizer turns the prompt into the token ids the target verifies")
        self._scorer = next(iter(self._draft_scorers.values()))
        self._vocabulary_checked = False
        if target.ready:
            await self._check_remote_vocabulary(target, at_start=True)

    def _choose_mode(self, target: Backend) -> Mode:
        if self.config.mode == "predicted":
            return "predicted"
        if self._target_scorer is not None:
            return "local"
        if target.capabilities.prompt_logprobs:
            return "remote"
        if self.config.mode == "verify":
            raise ValueError(f"target {target.name!r} can neither score tokens in-process nor return prompt "
                             "logprobs: it cannot verify drafts (use mode: predicted)")
        return "predicted"

    def _draft_scorer(self, name: str) -> TokenScorer:
        scorer = self.resources.backend(name).token_scorer()
        if scorer is None:
            raise ValueError(f"draft backend {name!r} has no in-process TokenScorer: drafting needs a local model")
        return scorer

    async def _check_remote_vocabulary(self, target: Backend, *, at_start: bool) -> None:
        assert self._scorer is not None
        matches = await remote_vocabulary_matches(target, self._scorer)
        if matches is None:
            return  # unreachable now: asked again on the first request
        self._vocabulary_checked = True
        if not matches:
            message = (f"target {target.name!r} maps the draft's token ids to other text: it does not share the "
                       "draft's vocabulary, and speculative decoding needs the same token ids")
            if at_start:
                raise ValueError(message)
            raise UpstreamError(message, backend=target.name, code="speculative_vocabulary_mismatch")

    def ready(self) -> bool:
        return all(self.resources.backend(name).ready for name in self.config.referenced_backends())

    # --- per request ----------------------------------------------------------------------

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        ctx.set_route("speculative")
        if self.mode == "predicted":
            async for event in predicted_answer(request, ctx, self.config.draft_backends()[0], self.config.target):
                yield event
            return
        if self._answered_by_target(request.params, ctx):
            async for generated in ctx.call_chat(self.config.target, request.messages, request.params):
                yield AnswerDone.of(generated) if isinstance(generated, GenerationDone) else generated
            return
        if request.params.logprobs:
            raise UnsupportedParameterError("logprobs are not available from a speculative model", param="logprobs")
        # Remote targets render no template here: the drafter's (the same model family's) does.
        renderer = self.resources.backend(self.config.target if self.mode == "local"
                                          else self.config.draft_backends()[0])
        text = await render_chat_text(renderer, request.messages, request.params.extra)
        if text is None:
            raise InvalidRequestError(f"backend {renderer.name!r} has no chat template", param="messages")
        assert self._scorer is not None
        ids = await self._scorer.tokenize(text)
        constraint = await self._constraint(request.params, ctx)
        async for item in self._answer(ids, request.params, ctx, constraint):
            if isinstance(item, _Finished):
                yield AnswerDone(item.finish, item.prompt_tokens, item.completion_tokens, self._target().model_name)
            else:
                yield item

    async def completion(
        self, prompt: CompletionPrompt, params: SamplingParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationEvent]:
        ctx.set_route("speculative")
        if self.mode == "predicted":
            raise InvalidRequestError(f"model {self.public_name!r} (predicted mode) serves chat only", param="model")
        if self._answered_by_target(params, ctx):
            async for generated in ctx.call_completion(self.config.target, prompt, params):
                yield generated
            return
        if prompt.echo or prompt.prompt_logprobs is not None or params.logprobs:
            raise UnsupportedParameterError("echo and logprobs are not available from a speculative model",
                                            param="logprobs")
        assert self._scorer is not None
        ids = list(prompt.token_ids) if prompt.token_ids is not None else await self._scorer.tokenize(prompt.text or "")
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if any(not 0 <= t < self._scorer.vocab_size for t in ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {self._scorer.vocab_size})", param="prompt")
        constraint = await self._constraint(params, ctx)
        async for event in self._answer(ids, params, ctx, constraint):
            if isinstance(event, _Finished):
                yield GenerationDone("length" if event.finish == "length" else "stop", event.prompt_tokens,
                                     event.completion_tokens, self._target().model_name)
            else:
                yield event

    def _answered_by_target(self, params: SamplingParams, ctx: RequestContext) -> bool:
        """Requests the target answers itself, not speculated (recorded): tools (the target's
        chat path renders them into its template and parses its calls), and a grammar the target
        cannot share with the rounds (a remote target: its rows come from the server)."""
        if params.wants_tools():
            reason = "tools"
        elif params.wants_structured_output() and self._grammars() is None:
            reason = "response_format"
        else:
            return False
        ctx.record.extra["speculative_skipped"] = {"target": self.config.target, "reason": reason}
        return True

    def _grammars(self) -> GrammarCompiler | None:
        return self._target_scorer.grammars() if self._target_scorer is not None else None

    async def _constraint(self, params: SamplingParams, ctx: RequestContext) -> Constraint | None:
        """``response_format`` as a constraint on the rounds (None: unconstrained)."""
        compiler = self._grammars()
        if compiler is None or not params.wants_structured_output():
            return None
        constraint = await compile_constraint(compiler, params.extra)
        ctx.record.extra["speculative_constrained"] = "response_format"
        return constraint

    async def _answer(self, ids: list[int], params: SamplingParams, ctx: RequestContext,
                      constraint: Constraint | None = None) -> AsyncIterator[TokenChunk | _Finished]:
        assert self._scorer is not None and self._controller is not None
        if not self._vocabulary_checked:
            await self._check_remote_vocabulary(self._target(), at_start=False)
        decoding = Decoding(max_new_tokens=params.max_tokens or self.config.default_max_tokens,
                            temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        eos = self._scorer.eos_token_ids
        generation = Generation(ids, eos, decoding) if constraint is None \
            else ConstrainedGeneration(ids, eos, decoding, constraint)
        verifier = self._verifier(ctx)
        drafters = self._drafters()
        if constraint is not None:  # drafts and target rows under the one grammar (constrained.py)
            assert isinstance(verifier, LocalVerifier)
            verifier = ConstrainedVerifier(verifier, constraint)
            drafters = [ConstrainedModelDrafter(d.name, d.scorer, constraint) if isinstance(d, ModelDrafter)
                        else ConstrainedDrafter(d, constraint, eos) for d in drafters]
        wall, started = time.time(), time.perf_counter()
        finish = "length"
        holds = await self._reserve(ctx, ids, decoding.max_new_tokens)
        try:
            await self._calibrate(verifier, drafters, ids, generation)
            loop_started = time.perf_counter()
            rng = np.random.default_rng(decoding.seed)
            rounds = speculative_rounds(generation, verifier, drafters, self._controller, rng, params.stop)
            detokenizer = self._scorer.new_detokenizer()
            stops = StopMatcher(params.stop)
            pending: list[int] = []  # ids whose text is still held (a split character, a possible stop)
            try:
                async for step in rounds:
                    raw = step.text if step.text is not None else "".join(detokenizer.add(t) for t in step.tokens)
                    text, stopped = stops.feed(raw)
                    pending += step.tokens
                    if text:
                        yield TokenChunk(text=text, token_ids=tuple(pending))
                        pending = []
                    if stopped or step.finish:
                        finish = "stop" if stopped else (step.finish or "stop")
                        break
            finally:
                await rounds.aclose()
                generation.stats.wall_seconds = time.perf_counter() - loop_started
            tail = stops.flush()
            if tail or pending:
                yield TokenChunk(text=tail, token_ids=tuple(pending))
        finally:
            self._record(ctx, generation, wall, started, holds)
        yield _Finished(finish, generation.prompt_tokens, generation.stats.emitted)

    async def _calibrate(self, verifier: Verifier, drafters: Sequence[Drafter], ids: list[int],
                         generation: Generation) -> None:
        """Measure c(k) and d once per strategy, on the first request's prompt."""
        controller = self._controller
        assert controller is not None and self._calibration is not None
        if controller.costs is not None:
            return
        async with self._calibration:
            if controller.costs is not None:
                return
            started = time.perf_counter()
            models = [d for d in drafters if isinstance(d, ModelDrafter)]
            repeats = self.config.adaptive.calibration_repeats
            if isinstance(verifier, RemoteVerifier):
                try:
                    costs = await calibrate_remote(verifier, models, ids, self.config.max_k, repeats)
                except ValueError as exc:
                    raise UpstreamError(f"cannot measure the speculative target's costs: {exc}",
                                        backend=self.config.target) from None
            else:
                assert self._target_scorer is not None
                costs = await calibrate_local(self._target_scorer, models, ids, self.config.max_k, repeats)
            controller.costs = costs
            generation.stats.calibration_seconds = time.perf_counter() - started

    def _verifier(self, ctx: RequestContext) -> Verifier:
        if self._target_scorer is not None:
            target = self._target()
            return LocalVerifier(self._target_scorer, target if target.capabilities.token_ids else None)
        assert self._scorer is not None
        return RemoteVerifier(ctx, self.config.target, self._scorer.vocab_size, self.config.remote_top_logprobs)

    def _drafters(self) -> list[Drafter]:
        """Fresh per request (the n-gram drafter caches its lookup for the round at hand)."""
        assert self._draft_scorers is not None
        drafters: list[Drafter] = []
        for draft in self.config.drafters():
            if isinstance(draft, BackendDraft):
                drafters.append(ModelDrafter(draft.backend, self._draft_scorers[draft.backend]))
            else:
                drafters.append(NgramDrafter(draft.ngram))
        return drafters

    async def _reserve(self, ctx: RequestContext, ids: list[int], max_new: int) -> list[tuple[str, str, int]]:
        """Hold the worst case of the in-process calls summed into the record at the end (remote
        verify rounds are held one by one by call_completion): (purpose, backend, held)."""
        prompt = CompletionPrompt(token_ids=ids)
        wanted = [("verify", self.config.target, max_new)] if self.mode == "local" else []
        # At most max_k drafts per emitted token.
        wanted += [("draft", name, max_new * self.config.max_k) for name in self.config.draft_backends()]
        holds: list[tuple[str, str, int]] = []
        try:
            for purpose, backend, tokens in wanted:
                holds.append((purpose, backend, await ctx.reserve_call(backend, prompt, tokens)))
        except BaseException:
            for _, _, held in holds:
                ctx.release_call(held, 0.0)
            raise
        return holds

    def _record(self, ctx: RequestContext, generation: Generation, wall: float, started: float,
                holds: list[tuple[str, str, int]]) -> None:
        assert self._controller is not None
        target = self._target()
        drafts = {name: self.resources.backend(name).model_name for name in self.config.draft_backends()}
        calls = record_speculation(ctx, generation, self._controller, self.mode, (target.name, target.model_name),
                                   drafts, wall, started)
        spent = {(c.purpose, c.backend): c.cost_usd for c in calls}
        for purpose, backend, held in holds:
            ctx.release_call(held, spent.get((purpose, backend), 0.0))

    def _target(self) -> Backend:
        return self.resources.backend(self.config.target)
