"""The :class:`~gateway.core.backend.TokenScorer` of a local backend, over either engine.

A scoring call is one engine request: the llama.cpp engine runs it through its prefix cache
(only the tokens a cached sequence does not already hold are decoded, logits only for rows
``start-1 .. len-1``), interleaved with the generations it is running; the transformers
engine runs one full forward pass (the reference).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.backends.local.engine import Engine, ScoreRequest
from gateway.core.backend import Detokenizer, NextTokenScores, TokenScorer
from gateway.core.errors import InvalidRequestError
from gateway.core.structured.grammar import GrammarCompiler


class EngineTokenScorer(TokenScorer):
    def __init__(self, engine: Engine, context_length: int, grammars: GrammarCompiler | None = None) -> None:
        self._engine = engine
        self._context_length = context_length
        self._grammars = grammars

    def grammars(self) -> GrammarCompiler | None:
        return self._grammars

    @property
    def vocabulary_id(self) -> str:
        return self._engine.vocabulary_id

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._engine.eos_token_ids

    async def tokenize(self, text: str) -> list[int]:
        return self._engine.tokenize(text, add_special=False)

    def new_detokenizer(self) -> Detokenizer:
        return self._engine.new_detokenizer()

    async def score_next_tokens(
        self, token_ids: Sequence[int], start: int, *, want_logits: bool = False
    ) -> NextTokenScores:
        ids = list(token_ids)
        if not 1 <= start <= len(ids):
            raise InvalidRequestError(f"start must be in [1, {len(ids)}], got {start}")
        if len(ids) > self._context_length:
            raise InvalidRequestError(
                f"this model's context length is {self._context_length} tokens; scoring asks for {len(ids)}",
                code="context_length_exceeded",
            )
        vocab = self._engine.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})")
        loop = asyncio.get_running_loop()
        request = ScoreRequest(ids, start, want_logits, loop, loop.create_future())
        self._engine.submit(request)
        try:
            return await request.result
        finally:
            request.cancelled = True  # a caller gone mid-call: the engine drops the job
