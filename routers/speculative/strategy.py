"""``speculative``: a small draft proposes tokens, the target verifies them (docs/speculative.md).

Three ways to verify, chosen at policy load:

* ``local`` — the target is an in-process model: one forward pass per round over the drafts,
  the target's KV cache kept across rounds (:mod:`routers.speculative.decoding`).
* ``remote`` — the target is an OpenAI-compatible server that returns prompt logprobs (vLLM,
  another slm-gateway): one ``/v1/completions`` call per round (:mod:`.remote`).
* ``predicted`` — a target that can only take hints (cloud APIs): the draft's whole answer
  goes out as OpenAI's ``prediction`` (:mod:`.predicted`).

Decoding rounds run in a worker thread (the model is only read; each request owns its
caches); one round runs at a time per strategy so concurrent requests interleave by round
instead of fighting over the CPU cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import httpx

from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.local.detokenize import IncrementalDetokenizer, StopMatcher
from gateway.backends.openai.backend import OpenAICompatibleBackend
from gateway.core.backend import Backend, TokenChunk
from gateway.core.config import Price
from gateway.core.errors import UnsupportedParameterError, UpstreamUnavailableError
from gateway.core.record import CallRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, RequestContext, Strategy, StrategyEvent
from policies.loader import PolicyError
from policies.strategies import SpeculativeStrategy
from routers.registry import register_strategy
from routers.speculative.acceptance import DraftLength
from routers.speculative.decoding import Decoding, Generation, Round, Speculator
from routers.speculative.forward import CausalLM
from routers.speculative.predicted import predicted_answer
from routers.speculative.remote import RemoteVerifier, remote_rounds, unique_decodings
from routers.speculative.vocab import remote_tokenization_matches, same_vocabulary

Mode = Literal["local", "remote", "predicted"]


@register_strategy("speculative")
class Speculative(Strategy[SpeculativeStrategy]):
    mode: Mode = "local"
    _target_lm: CausalLM | None = None
    _draft_lm: CausalLM | None = None
    _tokenizer: Any = None
    _eos: frozenset[int] = frozenset()
    _verifier: RemoteVerifier | None = None
    _round_lock: asyncio.Lock | None = None

    # --- policy-load time -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except ValueError as exc:
            raise PolicyError(f"models.{self.public_name}", [str(exc)]) from None

    async def _start(self) -> None:
        config = self.config
        target = unwrap(self.resources.backend(config.target))
        draft_backend = unwrap(self.resources.backend(config.draft.backend)) if config.draft.backend else target
        self._round_lock = asyncio.Lock()
        if isinstance(target, LocalModelBackend):
            self.mode = "local"
        elif config.mode == "verify" or (config.mode == "auto" and target.supports_prefix_continuation):
            self.mode = "remote"
        else:
            self.mode = "predicted"
        if config.draft.self_layers is not None and self.mode != "local":
            raise ValueError("draft.self_layers needs an in-process (local) target")
        if self.mode == "predicted":
            return  # any draft backend will do: only its text is sent
        if not isinstance(draft_backend, LocalModelBackend):
            raise ValueError(f"draft backend {draft_backend.name!r} must be local (in-process) to draft token ids")
        if draft_backend.model is None:
            raise ValueError(f"draft backend {draft_backend.name!r} has no model loaded")
        self._tokenizer = draft_backend.tokenizer
        self._eos = frozenset(_eos_ids(draft_backend))
        self._draft_lm = CausalLM(draft_backend.model, config.draft.self_layers)
        if isinstance(target, LocalModelBackend):
            if not same_vocabulary(draft_backend.tokenizer, target.tokenizer):
                raise ValueError(f"draft {draft_backend.name!r} and target {target.name!r} do not share a tokenizer "
                                 "(different vocabularies): speculative decoding needs the same token ids")
            self._target_lm = CausalLM(target.model)
            return
        assert isinstance(target, OpenAICompatibleBackend)
        await self._start_remote(target)

    async def _start_remote(self, target: OpenAICompatibleBackend) -> None:
        if not target.configured:
            return  # answered with 503 like any unconfigured backend
        api_key_env = target.config.api_key_env
        api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        timeouts = target.config.timeouts
        client = httpx.AsyncClient(
            base_url=target.base_url, headers={"authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeouts.idle, connect=timeouts.connect),
        )
        root = target.base_url.removesuffix("/v1")
        matches = await remote_tokenization_matches(client, root, target.upstream_model, self._tokenizer)
        if matches is False:
            await client.aclose()
            raise ValueError(f"target {target.name!r} tokenizes differently from the draft "
                             "(POST /tokenize disagrees): speculative decoding needs the same token ids")
        token_id_of = await asyncio.to_thread(unique_decodings, self._tokenizer)
        self._verifier = RemoteVerifier(client, target.upstream_model, token_id_of, self.config.remote_top_logprobs)

    def ready(self) -> bool:
        backends = [self.config.target] + ([self.config.draft.backend] if self.config.draft.backend else [])
        return all(self.resources.backend(name).ready for name in backends)

    # --- per request ----------------------------------------------------------------------

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        ctx.set_route("speculative")
        if self.mode == "predicted":
            async for event in predicted_answer(request, ctx, self.config.draft.backend or self.config.target,
                                                self.config.target):
                yield event
            return
        if request.params.logprobs:
            raise UnsupportedParameterError("logprobs are not available from a speculative model", param="logprobs")
        if self.mode == "remote" and self._verifier is None:  # unconfigured target
            target = self.resources.backend(self.config.target)
            raise UpstreamUnavailableError(f"speculative target {target.name!r} is not configured", backend=target.name)
        draft_backend = self._draft_backend()
        prompt = await draft_backend.render_chat_prompt(request.messages)
        prompt_ids: list[int] = self._tokenizer.encode(prompt or "", add_special_tokens=False)
        params = request.params
        decoding = Decoding(
            max_new_tokens=params.max_tokens or _default_max_tokens(draft_backend),
            temperature=params.temperature, top_p=params.top_p, seed=params.seed,
        )
        lengths = DraftLength(self.config.k, self.config.max_k, self.config.adaptive_k)
        started, wall = time.perf_counter(), time.time()
        generation: Generation
        if self.mode == "local":
            assert self._target_lm is not None and self._draft_lm is not None
            generation = Speculator(self._target_lm, self._draft_lm, prompt_ids, set(self._eos), decoding, lengths)
            rounds = self._local_rounds(generation)
        else:
            generation = Generation(prompt_ids, set(self._eos), decoding, lengths)
            rounds = self._remote_rounds(generation)
        detok = IncrementalDetokenizer(self._tokenizer)
        stops = StopMatcher(params.stop)
        finish = "length"
        try:
            async for step in rounds:
                text, stopped = stops.feed("".join(detok.add(t) for t in step.tokens))
                if text:
                    yield TokenChunk(text=text, token_ids=tuple(step.tokens))
                if stopped or step.finish:
                    finish = "stop" if stopped else (step.finish or "stop")
                    break
        finally:
            await rounds.aclose()
            self._record(ctx, generation, wall, started)
        tail = stops.flush()
        if tail:
            yield TokenChunk(text=tail)
        yield AnswerDone(finish, generation.prompt_tokens, generation.stats.emitted, self._target_backend().model_name)

    async def _local_rounds(self, speculator: Speculator) -> AsyncGenerator[Round, None]:
        assert self._round_lock is not None
        while True:
            async with self._round_lock:
                step = await asyncio.to_thread(speculator.step)
            yield step
            if step.finish:
                return

    async def _remote_rounds(self, generation: Generation) -> AsyncGenerator[Round, None]:
        assert self._verifier is not None and self._draft_lm is not None and self._round_lock is not None
        async for step in remote_rounds(generation, self._draft_lm, self._verifier, self._round_lock):
            yield step

    # --- accounting -----------------------------------------------------------------------

    def _record(self, ctx: RequestContext, generation: Generation, wall: float, started: float) -> None:
        stats = generation.stats
        summary = stats.as_dict()
        summary["mode"] = self.mode
        summary["self_layers"] = self.config.draft.self_layers
        latency_ms = (time.perf_counter() - started) * 1000
        target = self._target_backend()
        draft = self._draft_backend()
        target_call = CallRecord(
            backend=target.name, model=target.model_name, started_at=wall, purpose="verify",
            prompt_tokens=stats.target_prompt_tokens if self.mode == "remote" else generation.prompt_tokens,
            completion_tokens=stats.emitted if self.mode == "local" else stats.rounds,
            latency_ms=stats.verify_seconds * 1000 if self.mode == "remote" else latency_ms,
            extra={"target_passes": stats.target_passes},
        )
        draft_call = CallRecord(
            backend=draft.name, model=draft.model_name, started_at=wall, purpose="draft",
            prompt_tokens=generation.prompt_tokens, completion_tokens=stats.drafted,
            latency_ms=stats.draft_seconds * 1000, extra={"draft_passes": stats.draft_passes},
        )
        for call in (target_call, draft_call):
            price = ctx.resources.prices.get(call.backend) or Price()
            call.cost_usd = price.cost(call.prompt_tokens, call.completion_tokens)
            ctx.record.calls.append(call)
        summary["target_calls" if self.mode == "remote" else "target_forward_passes"] = stats.target_passes
        ctx.record.extra["speculative"] = summary

    def _target_backend(self) -> Backend:
        return self.resources.backend(self.config.target)

    def _draft_backend(self) -> Backend:
        return unwrap(self.resources.backend(self.config.draft.backend or self.config.target))


def unwrap(backend: Backend) -> Backend:
    """The raw backend under the gateway's reliability wrappers (``.inner``): speculation needs
    the in-process model object or the upstream's address, not the guarded call path."""
    inner = backend.__dict__.get("inner")
    while isinstance(inner, Backend):
        backend, inner = inner, inner.__dict__.get("inner")
    return backend


def _eos_ids(backend: LocalModelBackend) -> set[int]:
    ids: set[int] = set()
    for candidate in (backend.tokenizer.eos_token_id, getattr(backend.model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list):
            ids.update(candidate)
    return ids


def _default_max_tokens(backend: Backend) -> int:
    backend = unwrap(backend)
    if isinstance(backend, LocalModelBackend):
        return backend.config.default_max_tokens
    return 1024
