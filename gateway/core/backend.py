"""The one interface every token source implements.

A backend turns a chat conversation or a raw prompt into a stream of :class:`TokenChunk`
events closed by one :class:`GenerationDone`. In-process models and OpenAI-compatible
servers look the same to the routing strategies above them; errors are raised as
:mod:`gateway.core.errors` exceptions (never a transport library's own).
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


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What a backend can do beyond plain chat / completion streaming.

    Strategies and the policy loader ask these instead of testing a backend's class, so a new
    backend kind is usable by every strategy that needs only what it declares.
    """

    local: bool = False  # no request byte leaves this machine (privacy rules rely on it)
    prefix_continuation: bool = False  # stream_completion continues an assistant prefix (hand-off)
    prompt_logprobs: bool = False  # /v1/completions echo with per-prompt-token logprobs (remote verify)
    token_ids: bool = False  # prompts as token ids; a local tokenizer (tokenize / render_chat_prompt)
    token_scoring: bool = False  # an in-process TokenScorer (speculative draft / verify)
    tools: bool = False  # tools / tool_choice honoured
    grammar: bool = False  # response_format / constrained decoding honoured
    embeddings: bool = False  # /v1/embeddings


@dataclass(frozen=True, slots=True)
class NextTokenScores:
    """The model's next-token view after each prefix ``token_ids[:j]`` for j in ``start..len``.

    ``argmax[i]`` is the most likely token after ``token_ids[: start + i]`` (ties: lowest id).
    ``logits`` (only when asked for) is a float32 numpy array of shape (rows, vocab) of the raw
    logits, for sampling-mode acceptance rules.
    """

    argmax: tuple[int, ...]
    logits: Any = None


class Detokenizer(ABC):
    """Turns a growing stream of token ids into text deltas (never splits a UTF-8 character)."""

    @abstractmethod
    def add(self, token_id: int) -> str:
        """The text the new token completes (may be empty while a character is incomplete)."""


class TokenScorer(ABC):
    """An in-process model seen as a function of token ids (speculative decoding's contract).

    Calls are cheap to repeat on a growing sequence: an engine with prefix reuse computes only
    the tokens it has not seen in the same order (a draft extending its proposal, a verifier's
    committed context plus new drafts); a sequence that diverges from the cached one is rolled
    back to the common prefix.
    """

    @property
    @abstractmethod
    def vocabulary_id(self) -> str:
        """Equal for two scorers exactly when they map the same texts to the same token ids."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @abstractmethod
    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token markup in it (a rendered chat template) is parsed."""

    @abstractmethod
    def new_detokenizer(self) -> Detokenizer: ...

    @abstractmethod
    async def score_next_tokens(
        self, token_ids: Sequence[int], start: int, *, want_logits: bool = False
    ) -> NextTokenScores:
        """Next-token scores after every prefix ``token_ids[:j]``, ``start <= j <= len(token_ids)``
        (``1 <= start``): ``len(token_ids) - start + 1`` rows, computed in one batched pass."""


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
    def capabilities(self) -> BackendCapabilities:
        """What this backend can do (see :class:`BackendCapabilities`)."""
        return BackendCapabilities()

    @property
    def is_local(self) -> bool:
        """True when no request byte leaves this machine (privacy rules rely on it)."""
        return self.capabilities.local

    @property
    def supports_prefix_continuation(self) -> bool:
        """True when :meth:`stream_completion` can continue an assistant prefix."""
        return self.capabilities.prefix_continuation

    def token_scorer(self) -> TokenScorer | None:
        """The in-process scorer (``capabilities.token_scoring``), else None."""
        return None

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
