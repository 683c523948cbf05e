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
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.backends.local.sampling import PromptScore
from gateway.core.backend import ChatMessage, Detokenizer, NextTokenScores


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
    reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


EngineOutput = GeneratedToken | PromptScores | EngineFinished


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

    def emit(self, item: EngineOutput) -> None:
        self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)

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
    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The model's chat template over ``messages``, generation prompt added."""

    @abstractmethod
    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (logprob entries)."""

    @abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids back to text, special tokens included (echo of a prompt)."""

    @abstractmethod
    def new_detokenizer(self) -> Detokenizer:
        """Streamed text of generated tokens (special tokens left out)."""
