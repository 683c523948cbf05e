"""The one interface every token source implements.

A backend turns a chat conversation or a raw prompt into a stream of :class:`TokenChunk`
events closed by one :class:`GenerationDone`. In-process models and OpenAI-compatible
servers look the same to the routing strategies above them; errors are raised as
:mod:`gateway.core.errors` exceptions (never a transport library's own).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from gateway.core.errors import UnsupportedParameterError

if TYPE_CHECKING:
    from gateway.core.structured.grammar import GrammarCompiler

# "tool_calls" / "content_filter" / "function_call" come from upstreams (and local tool calls).
FinishReason = Literal["stop", "length", "cancelled", "tool_calls", "content_filter", "function_call"]


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
    # OpenAI's streamed tool-call fragments ({"index", "id"?, "type"?, "function": {"name"?,
    # "arguments"}}), relayed from an upstream or parsed from a local model's output.
    tool_calls: tuple[dict[str, Any], ...] = ()
    # Other fields of an upstream's delta ("refusal", "reasoning_content", ...) and of its
    # logprobs block ("logprobs.refusal"): relayed to the client as they came.
    extra: dict[str, Any] | None = None


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
    # Relayed to the client as the upstream sent them: top-level response fields
    # (system_fingerprint, service_tier, ...) and usage fields beyond the three counts
    # (prompt_tokens_details, completion_tokens_details, ...).
    response_fields: dict[str, Any] = field(default_factory=dict)
    usage_fields: dict[str, Any] = field(default_factory=dict)


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
    # Whether the client reads this answer as a stream. Never sent upstream: the reliability
    # wrapper bounds a call's total time only when the client waits for the whole answer
    # (RequestContext sets it on every call from the request's record).
    client_stream: bool = False
    # Sampling fields the client left out (or sent as null): a backend's ``sampling_defaults``
    # fill them (RequestContext), and an HTTP upstream is not sent the ones still unset.
    defaulted: frozenset[str] = frozenset()
    # The name the client gave the token limit: o-series upstreams accept only max_completion_tokens.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    # Tools and structured outputs travel in ``extra`` exactly as the client sent them (an
    # HTTP upstream receives them unchanged); these read them.
    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.extra.get("tools")
        return tools if isinstance(tools, list) else []

    @property
    def tool_choice(self) -> Any:
        return self.extra.get("tool_choice")

    @property
    def response_format(self) -> dict[str, Any] | None:
        value = self.extra.get("response_format")
        return value if isinstance(value, dict) else None

    def wants_tools(self) -> bool:
        """Tools the model may call (``tool_choice: none`` offers none)."""
        return bool(self.tools or self.extra.get("functions")) and self.tool_choice != "none"

    def wants_structured_output(self) -> bool:
        fmt = self.response_format
        return fmt is not None and fmt.get("type") in ("json_object", "json_schema")


class ChatMessage(BaseModel):
    """A normalised message: content is always plain text here (content parts joined).

    ``wire`` keeps the message exactly as the client sent it (content parts, ``content: null``,
    audio...) for HTTP upstreams; it is used only while ``content`` still equals its text, so a
    strategy that rewrites content (privacy redaction) never leaks the original.
    """

    role: str
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls (OpenAI shape)
    tool_call_id: str | None = None  # role "tool": the call this message answers
    wire: dict[str, Any] | None = Field(None, exclude=True, repr=False)

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it: absent keys rather than nulls."""
        return self.model_dump(exclude_none=True)


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
    logit_bias: bool = False  # logit_bias honoured
    penalties: bool = False  # frequency_penalty / presence_penalty honoured
    relays_all: bool = False  # every client field is relayed to a server that judges it (HTTP upstream)


def unsupported_parameter(capabilities: BackendCapabilities, params: SamplingParams) -> str | None:
    """The first parameter in ``params`` that a backend with ``capabilities`` would silently
    ignore, or None: a request the backend cannot honour gets a 400 instead of a wrong answer."""
    extra = params.extra
    if extra.get("continue_final_message") and not capabilities.prefix_continuation:
        return "continue_final_message"  # an upstream that does not continue would start a new turn
    if capabilities.relays_all:
        return None
    if extra.get("suffix"):
        return "suffix"
    if extra.get("functions"):  # OpenAI's deprecated function calling: relayed; local models read tools
        return "functions"
    if params.wants_tools() and not capabilities.tools:
        return "tools"
    if params.wants_structured_output() and not capabilities.grammar:
        return "response_format"
    if extra.get("logit_bias") and not capabilities.logit_bias:
        return "logit_bias"
    for name in ("frequency_penalty", "presence_penalty"):
        if extra.get(name) and not capabilities.penalties:
            return name
    return None


def check_supported(backend: Backend, params: SamplingParams) -> None:
    name = unsupported_parameter(backend.capabilities, params)
    if name is not None:
        raise UnsupportedParameterError(
            f"backend {backend.name!r} ({backend.model_name}) does not support {name!r}; "
            "send it to a model served by an upstream that does, or leave it out", param=name)


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str


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

    def grammars(self) -> GrammarCompiler | None:
        """This vocabulary's grammar compiler (constrained decoding over these ids), if any."""
        return None

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

    @property
    def sampling_defaults(self) -> Mapping[str, Any]:
        """Sampling settings used when the client gives none (the policy's ``defaults:``)."""
        return {}

    async def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any]) -> EmbeddingResult:
        """Embeddings of ``inputs`` (``capabilities.embeddings``); ``extra`` is relayed upstream."""
        raise UnsupportedParameterError(f"backend {self.name!r} does not serve embeddings", param="model")

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
