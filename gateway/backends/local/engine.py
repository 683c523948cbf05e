"""The engine interface under :class:`~gateway.backends.local.backend.LocalModelBackend`.

An engine owns one loaded model on one worker thread. The backend hands it requests
(:class:`GenerateRequest`, :class:`ScoreRequest`) and reads results back on the event loop:
token events through the request's asyncio queue, scores through a future, both delivered
with ``loop.call_soon_threadsafe``. Two engines implement it: ``llamacpp`` (the GGUF natively,
continuous batching, prefix reuse) and ``transformers`` (the numerical reference).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.backends.local.sampling import Logits, PromptScore, TokenDraw, draw_token
from gateway.core.backend import ChatMessage, Detokenizer, NextTokenScores
from gateway.core.structured.grammar import Constraint


@dataclass(slots=True)
class GeneratedToken:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(slots=True)
class PromptScores:
    """Per-prompt-token logprobs (``None`` for the first token), sent before any token."""

    scores: list[PromptScore]


@dataclass(slots=True)
class EngineFinished:
    reason: str  # "stop" | "length" | "cancelled" | "error" | "constraint" (the grammar allowed no token)
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


EngineOutput = GeneratedToken | PromptScores | EngineFinished


class ConstraintError(RuntimeError):
    """The grammar allows no token here (the matcher is in error): this sequence fails alone."""


@dataclass(slots=True)
class GenerateRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    logprobs: bool
    top_logprobs: int
    prompt_logprobs: int | None
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue[EngineOutput]
    cancelled: bool = False  # set by the consumer (client gone, stop sequence hit)
    generated: int = 0
    rng: np.random.Generator | None = None
    # response_format / forced tool call: the allowed tokens at each step (None: unconstrained).
    constraint: Constraint | None = None

    def emit(self, item: EngineOutput) -> None:
        self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)

    @property
    def grammar_complete(self) -> bool:
        """The constrained document is complete: nothing but EOS could follow, so end here."""
        return self.constraint is not None and self.constraint.stopped

    def draw(self, logits: Logits) -> TokenDraw:
        """The next token from the raw logits, among the tokens the constraint allows (logprobs
        stay the model's raw ones: the confidence signal cascades read), and the constraint
        advanced by it. Both engines decode through this."""
        constraint = self.constraint
        if constraint is None:
            return draw_token(logits, self.temperature, self.top_p, self.logprobs, self.top_logprobs,
                              self.generator())
        allowed = constraint.allowed()
        if not allowed.any():
            raise ConstraintError(f"the grammar allows no next token: {constraint.error or 'dead end'}")
        draw = draw_token(logits, self.temperature, self.top_p, self.logprobs, self.top_logprobs,
                          self.generator(), allowed)
        if not constraint.advance(draw.token_id):
            raise ConstraintError(f"the grammar rejected token {draw.token_id}: {constraint.error}")
        return draw

    def generator(self) -> np.random.Generator:
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)
        return self.rng


@dataclass(slots=True)
class ScoreRequest:
    """A TokenScorer call: next-token rows after ``token_ids[:j]`` for ``start <= j <= len``."""

    token_ids: list[int]
    start: int
    want_logits: bool
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future[NextTokenScores]
    cancelled: bool = False

    def resolve(self, scores: NextTokenScores) -> None:
        self.loop.call_soon_threadsafe(_set_result, self.result, scores)

    def fail(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(_set_exception, self.result, error)


def _set_result(future: asyncio.Future[NextTokenScores], value: NextTokenScores) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[NextTokenScores], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


EngineRequest = GenerateRequest | ScoreRequest


@dataclass(slots=True)
class EngineStats:
    """Counters of the work an engine did (tests read them to see that prefix reuse skips work)."""

    decoded_tokens: int = 0  # tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from a cached sequence instead
    steps: int = 0  # forward passes
    max_step_tokens: int = 0  # the largest batch one forward pass took
    history: list[int] = field(default_factory=list)  # tokens per step, when recording


class Engine(ABC):
    """One model on one worker thread."""

    stats: EngineStats

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows of the logits (may exceed the tokenizer's count: padded embeddings)."""

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    @abstractmethod
    def vocabulary_id(self) -> str:
        """A hash of the token texts in id order (equal vocabularies hash equal)."""

    @property
    @abstractmethod
    def threads(self) -> int: ...

    @abstractmethod
    def active(self) -> int:
        """Requests admitted and not finished (read from any thread: a snapshot)."""

    @abstractmethod
    def start(self) -> None:
        """Start the worker thread (the model is loaded already)."""

    @abstractmethod
    def stop(self) -> None:
        """Finish every request as cancelled, stop the thread, free the model."""

    @abstractmethod
    def submit(self, request: EngineRequest) -> None:
        """Queue a request (safe to call from the event loop)."""

    @abstractmethod
    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """Token ids of ``text``; special-token markup is parsed. ``add_special`` adds what the
        tokenizer adds to a raw prompt (a BOS token for some models)."""

    @abstractmethod
    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()) -> str:
        """The model's chat template over ``messages`` offering ``tools`` (OpenAI's function
        tools; :mod:`gateway.backends.local.tool_prompt`), generation prompt added."""

    @abstractmethod
    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (logprob entries)."""

    @abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids back to text, special tokens included (echo of a prompt)."""

    @abstractmethod
    def new_detokenizer(self) -> Detokenizer:
        """Streamed text of generated tokens (special tokens left out)."""

    @abstractmethod
    def grammar_tokenizer(self) -> Any:
        """llguidance's tokenizer of this vocabulary, ``vocab_size`` wide (slow to build: the
        backend's GrammarCompiler builds it once)."""
