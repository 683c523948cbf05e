"""``local`` backend: an in-process model behind the Backend interface, on either engine.

The backend is engine-generic: it validates requests, tokenizes, turns engine events into
:class:`TokenChunk`/:class:`GenerationDone` (detokenization, stop sequences, logprob
entries) and hands out the :class:`TokenScorer`. What runs the model is an
:class:`~gateway.backends.local.engine.Engine`, imported only when the policy needs it, so a
process serving a GGUF through llama.cpp never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from gateway.backends.local.config import EngineName, LocalBackend
from gateway.backends.local.engine import (
    Engine,
    EngineOutput,
    GeneratedToken,
    GenerateRequest,
    PromptScores,
)
from gateway.backends.local.scorer import EngineTokenScorer
from gateway.backends.local.source import ModelLoadError, ModelSource, resolve_source
from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
    TokenScorer,
    TopLogprob,
)
from gateway.core.continuation import split_final
from gateway.core.detokenize import StopMatcher
from gateway.core.errors import InvalidRequestError, UpstreamError, UpstreamUnavailableError
from gateway.core.structured.checks import function_tools
from gateway.core.structured.grammar import Constraint, GrammarCompiler, compile_constraint, grammar_param
from gateway.core.structured.tool_events import with_tool_calls

logger = logging.getLogger(__name__)


def engine_for(config: LocalBackend, source: ModelSource) -> EngineName:
    """The engine a config runs on: as set, else llama.cpp for a GGUF and transformers for HF."""
    engine: EngineName = config.engine or ("llamacpp" if source.gguf_file else "transformers")
    if engine == "llamacpp" and source.gguf_file is None:
        raise ModelLoadError(f"engine llamacpp needs a GGUF file; {source.directory} is an HF directory")
    if engine == "llamacpp" and config.num_layers is not None:
        raise ModelLoadError("num_layers is a transformers-engine setting: set engine: transformers or drop it")
    return engine


def load_engine(name: str, config: LocalBackend) -> Engine:
    """Load the model on the engine its config selects (blocking; call it off the event loop)."""
    source = resolve_source(config.model, config.gguf_file)
    if engine_for(config, source) == "llamacpp":
        from gateway.backends.local.llamacpp.build import load_llamacpp

        return load_llamacpp(name, config, source)
    from gateway.backends.local.transformers.engine import load_transformers

    return load_transformers(name, config, source)


class LocalModelBackend(Backend):
    def __init__(self, name: str, config: LocalBackend) -> None:
        super().__init__(name)
        self.config = config
        self._engine: Engine | None = None
        self._scorer: TokenScorer | None = None
        self._grammars: GrammarCompiler | None = None
        self.load_seconds: float | None = None

    @property
    def model_name(self) -> str:
        if self.config.served_name:
            return self.config.served_name
        if self.config.model == "smollm2":
            return "SmolLM2-135M-Instruct"
        return self.config.model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")

    @property
    def ready(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> Engine:
        """The running engine (raises while loading)."""
        self._require_ready()
        assert self._engine is not None
        return self._engine

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True, prefix_continuation=True, prompt_logprobs=True, token_ids=True,
                                   token_scoring=True, grammar=True, tools=True)

    def token_scorer(self) -> TokenScorer | None:
        return self._scorer

    @property
    def sampling_defaults(self) -> Mapping[str, Any]:
        return self.config.defaults.as_dict()

    async def start(self) -> None:
        started = time.perf_counter()
        engine = await asyncio.to_thread(load_engine, self.name, self.config)
        self.load_seconds = time.perf_counter() - started
        engine.start()
        self._engine = engine
        self._grammars = GrammarCompiler(engine.grammar_tokenizer, engine.vocab_size)
        self._scorer = EngineTokenScorer(engine, self.config.context_length, self._grammars)
        logger.info("backend %s: %s loaded on %s in %.1fs (%d thread(s))", self.name, self.model_name,
                    type(engine).__name__, self.load_seconds, engine.threads)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine, self._scorer = self._engine, None, None
            await asyncio.to_thread(engine.stop)

    async def render_chat_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        return self.engine.render_chat(messages)

    async def tokenize(self, text: str) -> list[int] | None:
        return self.engine.tokenize(text, add_special=False)

    @property
    def grammars(self) -> GrammarCompiler:
        """The model's grammar compiler and cache (raises while loading)."""
        self._require_ready()
        assert self._grammars is not None
        return self._grammars

    async def constraint(self, params: SamplingParams) -> Constraint | None:
        """The constraint ``response_format`` / a forced tool call puts on the answer (None:
        unconstrained); an unenforceable schema is a 400 here, before the model runs."""
        return await compile_constraint(self.grammars, params.extra)

    def _require_ready(self) -> None:
        if self._engine is None:
            raise UpstreamUnavailableError(f"backend {self.name!r} is still loading", backend=self.name)

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        engine = self.engine
        # tool_choice "none": the tools are not shown at all (wants_tools is false), so the model
        # writes a plain answer rather than a call we would have to discard.
        tools = params.tools if params.wants_tools() else []
        head, prefix = split_final(messages, params.extra)  # a continued assistant message: appended
        ids = engine.tokenize(engine.render_chat(head, tools) + prefix, add_special=False)
        submitted: list[GenerateRequest] = []
        events = self._generate(ids, params, prompt_logprobs=None, submitted=submitted)
        if tools:

            def halt() -> None:
                for request in submitted:
                    request.cancelled = True

            names = {tool["function"]["name"] for tool in function_tools(params.extra)}
            events = with_tool_calls(events, parallel=params.extra.get("parallel_tool_calls") is not False,
                                     names=names, halt=halt)
        async with aclosing(events):
            async for event in events:
                yield event

    async def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        engine = self.engine
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            vocab = engine.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        else:
            ids = engine.tokenize(prompt.text or "", add_special=True)
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        async for event in self._generate(ids, params, prompt_logprobs=prompt.prompt_logprobs):
            yield event

    async def _generate(
        self, prompt_ids: list[int], params: SamplingParams, prompt_logprobs: int | None,
        submitted: list[GenerateRequest] | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The engine's events as backend events. ``submitted`` receives the engine request, so a
        consumer can end it early (``cancelled``) and still get its done event (true usage)."""
        engine = self.engine
        room = self.config.context_length - len(prompt_ids)
        if room < 0 or (params.max_tokens is not None and params.max_tokens > room):
            raise InvalidRequestError(
                f"this model's context length is {self.config.context_length} tokens; the prompt has "
                f"{len(prompt_ids)} and max_tokens asks for {params.max_tokens}",
                param="max_tokens", code="context_length_exceeded",
            )
        max_new = params.max_tokens if params.max_tokens is not None else min(room, self.config.default_max_tokens)
        constraint = await self.constraint(params)
        request = GenerateRequest(
            prompt_ids=prompt_ids, max_new_tokens=max_new, temperature=params.temperature,
            # OpenAI seeds are any int64; numpy's generators take non-negative ones.
            top_p=params.top_p, seed=params.seed % 2**64 if params.seed is not None else None,
            logprobs=params.logprobs,
            top_logprobs=params.top_logprobs if params.logprobs else 0,
            prompt_logprobs=prompt_logprobs, loop=asyncio.get_running_loop(), outputs=asyncio.Queue(),
            constraint=constraint,
        )
        engine.submit(request)
        if submitted is not None:
            submitted.append(request)
        detok = engine.new_detokenizer()
        stops = StopMatcher(params.stop)
        prompt_scores: tuple[TokenLogprob | None, ...] | None = None
        generated = 0
        try:
            while True:
                item: EngineOutput = await request.outputs.get()
                if isinstance(item, PromptScores):
                    prompt_scores = self._prompt_logprobs(item, prompt_ids)
                elif isinstance(item, GeneratedToken):
                    generated += 1
                    text, stopped = stops.feed(detok.add(item.token_id))
                    logprobs = (self._token_logprob(item),) if params.logprobs else ()
                    if text or logprobs:
                        yield TokenChunk(text=text, logprobs=logprobs, token_ids=(item.token_id,))
                    if stopped:
                        request.cancelled = True
                        yield self._done("stop", len(prompt_ids), generated, prompt_scores, prompt_ids)
                        return
                else:
                    if item.reason == "error":
                        raise UpstreamError(f"local generation failed: {item.error}", backend=self.name)
                    if item.reason == "constraint":  # the schema's fault, not the backend's: a 400
                        raise InvalidRequestError(f"the grammar could not be followed: {item.error}",
                                                  param=grammar_param(params.extra))
                    tail = stops.flush()
                    if tail:
                        yield TokenChunk(text=tail)
                    yield self._done(item.reason, item.prompt_tokens, item.completion_tokens, prompt_scores,
                                     prompt_ids)
                    return
        finally:
            # Client gone, consumer closed us, or we finished: the engine drops the sequence.
            request.cancelled = True

    def _done(
        self, reason: str, prompt_tokens: int, completion_tokens: int,
        prompt_scores: tuple[TokenLogprob | None, ...] | None, prompt_ids: list[int],
    ) -> GenerationDone:
        engine = self.engine
        return GenerationDone(
            finish_reason="length" if reason == "length" else "stop",
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, model=self.model_name,
            prompt_logprobs=prompt_scores, prompt_token_ids=tuple(prompt_ids),
            prompt_text=engine.decode(prompt_ids),
            prompt_token_strs=tuple(engine.token_text(t) for t in prompt_ids) if prompt_scores else None,
        )

    def _token_logprob(self, item: GeneratedToken) -> TokenLogprob:
        text = self.engine.token_text
        return TokenLogprob(
            token=text(item.token_id), logprob=item.logprob, token_id=item.token_id,
            top=tuple(TopLogprob(text(t), lp, t) for t, lp in item.top),
        )

    def _prompt_logprobs(self, scores: PromptScores, prompt_ids: list[int]) -> tuple[TokenLogprob | None, ...]:
        text = self.engine.token_text
        result: list[TokenLogprob | None] = []
        for token_id, score in zip(prompt_ids, scores.scores, strict=True):
            if score is None:
                result.append(None)
                continue
            logprob, rank, top = score
            result.append(TokenLogprob(
                token=text(token_id), logprob=logprob, token_id=token_id,
                top=tuple(TopLogprob(text(t), lp, t) for t, lp in top), rank=rank,
            ))
        return tuple(result)
