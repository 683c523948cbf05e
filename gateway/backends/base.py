"""The one interface every token source implements.

A backend turns a chat conversation or a raw prompt into a stream of :class:`TokenChunk`
events closed by one :class:`GenerationDone`. In-process models and OpenAI-compatible
servers look the same to the routing strategies above them; errors are raised as
:mod:`gateway.errors` exceptions (never a transport library's own).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    token_id: int | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of one generated (or prompt) token under the model's raw distribution."""

    token: str
    logprob: float
    token_id: int | None = None
    top: tuple[TopLogprob, ...] = ()
    rank: int | None = None  # 1 = the model's most likely token (prompt logprobs only)


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """Some text the model produced; ``logprobs`` holds one entry per token when asked for."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationDone:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    model: str
    # Completions-only: per-prompt-token logprobs (first entry None), when asked for.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    prompt_text: str | None = None  # the prompt as text (echo of a token-id prompt)
    prompt_token_strs: tuple[str, ...] | None = None
    extra_usage: dict[str, Any] = field(default_factory=dict)


GenerationEvent = TokenChunk | GenerationDone


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    # Fields the client sent that we do not interpret; forwarded verbatim to HTTP upstreams.
    extra: dict[str, Any] = field(default_factory=dict)


class ChatMessage(BaseModel):
    """A normalised message: content is always plain text here."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class CompletionPrompt:
    """A raw prompt for /v1/completions: text or token ids."""

    text: str | None = None
    token_ids: Sequence[int] | None = None
    echo: bool = False
    prompt_logprobs: int | None = None  # top-K per prompt token (vLLM semantics); 0 = chosen only


class Backend(ABC):
    """A configured token source. ``name`` is the backend's key in the policy."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model name reported in response bodies."""

    @property
    def ready(self) -> bool:
        """True when the backend can take requests now (model loaded, upstream configured)."""
        return True

    @property
    def is_local(self) -> bool:
        """True when no request byte leaves this machine (privacy rules rely on it)."""
        return False

    @property
    def supports_prefix_continuation(self) -> bool:
        """True when :meth:`stream_completion` can continue an assistant prefix."""
        return False

    async def start(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Load models / open connection pools."""

    async def close(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Release resources."""

    @abstractmethod
    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        """Generate an assistant turn. Cancelling the consumer cancels generation."""

    @abstractmethod
    def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        """Continue a raw prompt (text or token ids)."""

    async def render_chat_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        """The chat template applied to ``messages`` (generation prompt added), when known.

        Lets a strategy turn a chat into a raw prompt that another backend with the same
        template can continue (cascade hand-off, speculative decoding).
        """
        return None

    async def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` under this backend's tokenizer, when it has one locally."""
        return None
