"""A scripted model for speculative decoding's logic tests (tests/test_speculative_logic.py):
deterministic logits from the last two tokens, a TokenScorer and a Backend over it, and the
strategy built on them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    Detokenizer,
    GenerationDone,
    GenerationEvent,
    NextTokenScores,
    SamplingParams,
    TokenChunk,
    TokenScorer,
)
from gateway.core.config import Price
from gateway.core.record import RequestRecord
from gateway.core.strategy import GatewayResources, RequestContext
from routers.speculative.config import SpeculativeStrategy
from routers.speculative.strategy import Speculative

# --- a scripted model: deterministic logits from the last two tokens ----------------------


class ScriptedModel:
    def __init__(self, vocab: int, seed: int, scale: float = 2.0, noise_of: ScriptedModel | None = None,
                 noise: float = 0.0) -> None:
        self.vocab, self.seed, self.scale = vocab, seed, scale
        self.base, self.noise = noise_of, noise

    def logits(self, context: Sequence[int]) -> np.ndarray:
        key = (self.seed, context[-2] if len(context) > 1 else -1, context[-1])
        row = np.random.default_rng(abs(hash(key))).normal(size=self.vocab) * self.scale
        if self.base is not None:  # a draft: the target's logits plus its own error
            row = self.base.logits(context) + self.noise * row
        return row

    def greedy(self, prompt: Sequence[int], max_new: int, eos: int = 0) -> list[int]:
        out: list[int] = []
        while len(out) < max_new:
            token = int(np.argmax(self.logits([*prompt, *out])))
            if token == eos:
                break
            out.append(token)
        return out


class LetterDetokenizer(Detokenizer):
    def add(self, token_id: int) -> str:
        return chr(ord("a") + token_id % 26)


class ScriptedScorer(TokenScorer):
    """Prefix reuse as the contract says: only tokens after the common prefix with the last
    call are "computed"; with ``step_seconds`` each call sleeps as a modelled engine would:
    ``step_seconds * (1 + row_cost * (new_tokens - 1))``."""

    def __init__(self, model: ScriptedModel, vocabulary_id: str = "scripted-v1", step_seconds: float = 0.0,
                 row_cost: float = 1.0) -> None:
        self.model = model
        self._vocabulary_id = vocabulary_id
        self.step_seconds, self.row_cost = step_seconds, row_cost
        self.cached: list[int] = []
        self.computed = self.calls = 0

    @property
    def vocabulary_id(self) -> str:
        return self._vocabulary_id

    @property
    def vocab_size(self) -> int:
        return self.model.vocab

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({0})

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) % (self.model.vocab - 1) + 1 for c in text]

    def new_detokenizer(self) -> Detokenizer:
        return LetterDetokenizer()

    async def score_next_tokens(self, token_ids: Sequence[int], start: int, *,
                                want_logits: bool = False) -> NextTokenScores:
        ids = list(token_ids)
        common = next((i for i, (a, b) in enumerate(zip(self.cached, ids, strict=False)) if a != b),
                      min(len(self.cached), len(ids)))
        new = max(len(ids) - common, 1)
        self.cached, self.computed, self.calls = ids, self.computed + new, self.calls + 1
        if self.step_seconds:
            await asyncio.sleep(self.step_seconds * (1 + self.row_cost * (new - 1)))
        rows = [self.model.logits(ids[:j]) for j in range(start, len(ids) + 1)]
        return NextTokenScores(tuple(int(np.argmax(r)) for r in rows),
                               np.stack(rows).astype(np.float32) if want_logits else None)


class ScriptedBackend(Backend):
    """``streams``: the backend's own generation streams token ids (greedy, from the scorer's model)."""

    def __init__(self, name: str, scorer: TokenScorer | None, streams: bool = False) -> None:
        super().__init__(name)
        self.scorer = scorer
        self.streams = streams
        self.stream_calls = 0

    @property
    def model_name(self) -> str:
        return f"scripted-{self.name}"

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True, token_scoring=self.scorer is not None, token_ids=self.streams)

    def token_scorer(self) -> TokenScorer | None:
        return self.scorer

    async def render_chat_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        return "".join(f"<{m.role}>{m.content}" for m in messages) + "<assistant>"

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams
                                ) -> AsyncIterator[GenerationEvent]:
        assert self.streams and isinstance(self.scorer, ScriptedScorer) and prompt.token_ids is not None
        self.stream_calls += 1
        tokens = self.scorer.model.greedy(list(prompt.token_ids), params.max_tokens or 16)
        for token in tokens:
            await asyncio.sleep(self.scorer.step_seconds)
            yield TokenChunk(text="x", token_ids=(token,))
        yield GenerationDone("length" if len(tokens) == params.max_tokens else "stop", len(prompt.token_ids),
                             len(tokens), self.model_name)


TARGET = ScriptedModel(vocab=12, seed=1)
DRAFT = ScriptedModel(vocab=12, seed=2, noise_of=TARGET, noise=0.6)
PROMPT = [3, 5, 7, 9, 3, 5, 2, 4]


def strategy(draft: Any, *, target_scorer: TokenScorer | None = None, draft_scorer: TokenScorer | None = None,
             streams: bool = False, **config: Any) -> Speculative:
    backends = {"target": ScriptedBackend("target", target_scorer or ScriptedScorer(TARGET), streams),
                "draft": ScriptedBackend("draft", draft_scorer or ScriptedScorer(DRAFT))}
    prices = {"target": Price(input_per_1m=1.0, output_per_1m=2.0), "draft": Price(input_per_1m=0.5, output_per_1m=0.5)}
    spec = SpeculativeStrategy(type="speculative", target="target", draft=draft, **config)
    return Speculative("spec", spec, GatewayResources(backends=backends, prices=prices))


async def complete(spec: Speculative, prompt: list[int], max_tokens: int, **params: Any
                   ) -> tuple[list[int], RequestRecord]:
    record = RequestRecord("r", "spec", "/v1/completions", stream=False)
    out: list[int] = []
    params.setdefault("temperature", 0.0)
    async for event in spec.completion(CompletionPrompt(token_ids=prompt), SamplingParams(max_tokens=max_tokens,
                                                                                          **params),
                                       RequestContext(record, spec.resources)):
        if isinstance(event, TokenChunk):
            out += event.token_ids
    return out, record
