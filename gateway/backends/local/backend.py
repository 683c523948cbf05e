"""``local`` backend: an in-process transformers model behind the Backend interface."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.backends.local.config import LocalBackend
from gateway.backends.local.detokenize import IncrementalDetokenizer, StopMatcher
from gateway.backends.local.engine import (
    EngineOutput,
    EngineRequest,
    GeneratedToken,
    GenerationEngine,
    PromptScores,
)
from gateway.backends.local.loader import load_model
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
    TopLogprob,
)
from gateway.core.errors import InvalidRequestError, UpstreamError, UpstreamUnavailableError

logger = logging.getLogger(__name__)


class LocalModelBackend(Backend):
    def __init__(self, name: str, config: LocalBackend) -> None:
        super().__init__(name)
        self.config = config
        self.model: Any = None
        self.tokenizer: Any = None
        self._engine: GenerationEngine | None = None
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
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True, prefix_continuation=True, prompt_logprobs=True, token_ids=True)

    async def start(self) -> None:
        started = time.perf_counter()
        self.model, self.tokenizer = await asyncio.to_thread(
            load_model, self.config.model, self.config.gguf_file, num_layers=self.config.num_layers
        )
        self.load_seconds = time.perf_counter() - started
        self._engine = GenerationEngine(self.model, self._eos_ids(), self.config.max_batch_size)
        self._engine.start()
        logger.info("backend %s: %s loaded in %.1fs", self.name, self.model_name, self.load_seconds)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.stop)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for candidate in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(candidate, int):
                ids.add(candidate)
            elif isinstance(candidate, list):
                ids.update(candidate)
        return ids

    async def render_chat_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        self._require_ready()
        text: str = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return text

    async def tokenize(self, text: str) -> list[int] | None:
        self._require_ready()
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def _require_ready(self) -> None:
        if self._engine is None:
            raise UpstreamUnavailableError(f"backend {self.name!r} is still loading", backend=self.name)

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        prompt = await self.render_chat_prompt(messages)
        assert prompt is not None
        ids: list[int] = self.tokenizer.encode(prompt, add_special_tokens=False)
        async for event in self._generate(ids, params, prompt_logprobs=None):
            yield event

    async def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        self._require_ready()
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        else:
            ids = self.tokenizer.encode(prompt.text or "")
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        async for event in self._generate(ids, params, prompt_logprobs=prompt.prompt_logprobs):
            yield event

    async def _generate(
        self, prompt_ids: list[int], params: SamplingParams, prompt_logprobs: int | None
    ) -> AsyncIterator[GenerationEvent]:
        self._require_ready()
        assert self._engine is not None
        room = self.config.context_length - len(prompt_ids)
        if room < 0 or (params.max_tokens is not None and params.max_tokens > room):
            raise InvalidRequestError(
                f"this model's context length is {self.config.context_length} tokens; the prompt has "
                f"{len(prompt_ids)} and max_tokens asks for {params.max_tokens}",
                param="max_tokens", code="context_length_exceeded",
            )
        max_new = params.max_tokens if params.max_tokens is not None else min(room, self.config.default_max_tokens)
        loop = asyncio.get_running_loop()
        request = EngineRequest(
            prompt_ids=prompt_ids, max_new_tokens=max_new, temperature=params.temperature,
            top_p=params.top_p, seed=params.seed,
            top_logprobs=params.top_logprobs if params.logprobs else 0,
            prompt_logprobs=prompt_logprobs, loop=loop, outputs=asyncio.Queue(),
        )
        self._engine.submit(request)
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopMatcher(params.stop)
        prompt_scores: tuple[TokenLogprob | None, ...] | None = None
        try:
            while True:
                item: EngineOutput = await request.outputs.get()
                if isinstance(item, PromptScores):
                    prompt_scores = self._prompt_logprobs(item, prompt_ids)
                elif isinstance(item, GeneratedToken):
                    text, stopped = stops.feed(detok.add(item.token_id))
                    logprobs = (self._token_logprob(item),) if params.logprobs else ()
                    if text or logprobs:
                        yield TokenChunk(text=text, logprobs=logprobs, token_ids=(item.token_id,))
                    if stopped:
                        request.cancelled = True
                        yield self._done("stop", len(prompt_ids), request.generated, prompt_scores, prompt_ids)
                        return
                else:
                    if item.reason == "error":
                        raise UpstreamError(f"local generation failed: {item.error}", backend=self.name)
                    tail = stops.flush()
                    if tail:
                        yield TokenChunk(text=tail)
                    reason = "length" if item.reason == "length" else "stop"
                    yield self._done(reason, item.prompt_tokens, item.completion_tokens, prompt_scores, prompt_ids)
                    return
        finally:
            # Client gone, consumer closed us, or we finished: the engine drops the row.
            request.cancelled = True

    def _done(
        self, reason: str, prompt_tokens: int, completion_tokens: int,
        prompt_scores: tuple[TokenLogprob | None, ...] | None, prompt_ids: list[int],
    ) -> GenerationDone:
        return GenerationDone(
            finish_reason="length" if reason == "length" else "stop",
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, model=self.model_name,
            prompt_logprobs=prompt_scores, prompt_token_ids=tuple(prompt_ids),
            prompt_text=self.tokenizer.decode(prompt_ids),
            prompt_token_strs=tuple(self._token_text(t) for t in prompt_ids) if prompt_scores else None,
        )

    def _token_text(self, token_id: int) -> str:
        text: str = self.tokenizer.decode([token_id])
        return text

    def _token_logprob(self, item: GeneratedToken) -> TokenLogprob:
        return TokenLogprob(
            token=self._token_text(item.token_id), logprob=item.logprob, token_id=item.token_id,
            top=tuple(TopLogprob(self._token_text(t), lp, t) for t, lp in item.top),
        )

    def _prompt_logprobs(self, scores: PromptScores, prompt_ids: list[int]) -> tuple[TokenLogprob | None, ...]:
        result: list[TokenLogprob | None] = []
        for token_id, score in zip(prompt_ids, scores.scores, strict=True):
            if score is None:
                result.append(None)
                continue
            logprob, rank, top = score
            result.append(TokenLogprob(
                token=self._token_text(token_id), logprob=logprob, token_id=token_id,
                top=tuple(TopLogprob(self._token_text(t), lp, t) for t, lp in top), rank=rank,
            ))
        return tuple(result)
