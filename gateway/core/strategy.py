"""The routing-strategy contract.

A strategy is built once per policy load from its config (a ``routers/<strategy>/config.py``
model) and the gateway's backends. For each request it yields :class:`TokenChunk` events
and ends with one :class:`AnswerDone`; streaming and non-streaming responses are both
assembled from that one iterator, so no strategy has two code paths.

Upstream calls go through :meth:`RequestContext.call_chat` / :meth:`RequestContext.call_completion`,
which time them, count their tokens and cost, and append a
:class:`~gateway.core.record.CallRecord` to the request's record.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    EmbeddingResult,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    check_supported,
)
from gateway.core.config import Price, StrategyBase
from gateway.core.errors import GatewayError, InvalidRequestError, error_kind
from gateway.core.record import CallRecord, RequestRecord

if TYPE_CHECKING:
    from gateway.core.selfcal import SelfCalibrationStore, ShadowRunner


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """End of a strategy's answer: what the client's final chunk / usage reports."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    # The answering backend's extra top-level and usage fields, relayed (GenerationDone's).
    response_fields: dict[str, Any] = field(default_factory=dict)
    usage_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, done: GenerationDone, **changes: Any) -> AnswerDone:
        """The answer a backend's generation ends with, with ``changes`` (e.g. summed tokens)."""
        answer = cls(done.finish_reason, done.prompt_tokens, done.completion_tokens, done.model,
                     done.response_fields, done.usage_fields)
        return replace(answer, **changes) if changes else answer


StrategyEvent = TokenChunk | AnswerDone


@dataclass(slots=True)
class ChatRequestView:
    """What a strategy sees of a chat request (already validated and normalised)."""

    messages: list[ChatMessage]
    params: SamplingParams
    stream: bool
    user: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    key_tags: tuple[str, ...] = ()
    has_tools: bool = False
    has_response_format: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    def system_text(self) -> str:
        return "\n".join(m.content for m in self.messages if m.role == "system")


@dataclass(slots=True)
class GatewayResources:
    """What strategies may use: the policy's backends and prices, and sibling strategies."""

    backends: Mapping[str, Backend]
    prices: Mapping[str, Price]
    strategies: dict[str, Strategy[Any]] = field(default_factory=dict)
    # The self-calibrating cascade's service parts (gateway/core/selfcal.py); None: not offered.
    shadow: ShadowRunner | None = None
    selfcal_store: SelfCalibrationStore | None = None

    def backend(self, name: str) -> Backend:
        return self.backends[name]


class CallBudget(Protocol):
    """A request's spending limit, asked before every upstream call (a virtual key's budget).

    ``hold`` reserves the call's worst-case cost (nano-dollars, returned) before it starts, or
    raises a :class:`~gateway.core.errors.RateLimitError` and the call is never made;
    ``release`` turns that hold into what the call really cost once it ended.
    """

    async def hold(self, backend: str, prompt: Sequence[ChatMessage] | CompletionPrompt,
                   max_tokens: int | None) -> int: ...

    def release(self, held: int, cost_usd: float) -> None: ...


class RequestContext:
    """Per-request state a strategy writes to: the accounting record and response headers."""

    def __init__(self, record: RequestRecord, resources: GatewayResources, budget: CallBudget | None = None) -> None:
        self.record = record
        self.resources = resources
        self.response_headers: dict[str, str] = {}
        self.budget = budget  # None: nothing limits this request's spending (admin, auth off, no budget)

    async def reserve_call(self, backend_name: str, prompt: Sequence[ChatMessage] | CompletionPrompt,
                           max_tokens: int | None) -> int:
        """For a call made outside call_chat / call_completion (e.g. a remote verify round): hold its
        worst case before making it; pass the result to :meth:`release_call` when it ended."""
        return await self.budget.hold(backend_name, prompt, max_tokens) if self.budget is not None else 0

    def release_call(self, held: int, cost_usd: float) -> None:
        if self.budget is not None:
            self.budget.release(held, cost_usd)

    def set_route(self, route: str) -> None:
        self.record.route = route

    async def call_chat(
        self, backend_name: str, messages: Sequence[ChatMessage], params: SamplingParams,
        *, purpose: str = "answer",
    ) -> AsyncIterator[GenerationEvent]:
        backend = self.resources.backend(backend_name)
        params = self.backend_params(backend, params)
        held = await self.reserve_call(backend_name, messages, params.max_tokens)  # before the call exists
        async for event in self._record_call(backend, backend.stream_chat(messages, params), purpose, held):
            yield event

    async def call_completion(
        self, backend_name: str, prompt: CompletionPrompt, params: SamplingParams,
        *, purpose: str = "answer",
    ) -> AsyncIterator[GenerationEvent]:
        backend = self.resources.backend(backend_name)
        params = self.backend_params(backend, params)
        held = await self.reserve_call(backend_name, prompt, params.max_tokens)
        async for event in self._record_call(backend, backend.stream_completion(prompt, params), purpose, held):
            yield event

    async def call_embeddings(
        self, backend_name: str, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any],
    ) -> EmbeddingResult:
        """One recorded embeddings call (its tokens are prompt tokens, priced as input)."""
        backend = self.resources.backend(backend_name)
        call = CallRecord(backend=backend.name, model=backend.model_name, started_at=time.time(), purpose="answer")
        self.record.calls.append(call)
        started = time.perf_counter()
        price = self.resources.prices.get(backend.name) or Price(input_per_1m=0.0, output_per_1m=0.0)
        try:
            result = await backend.embed(inputs, extra)
        except BaseException as exc:
            call.status = "cancelled" if _is_cancel(exc) else error_kind(exc)
            _settle(call, started, price)
            raise
        call.model, call.prompt_tokens = result.model, result.prompt_tokens
        _settle(call, started, price)
        return result

    def backend_params(self, backend: Backend, params: SamplingParams) -> SamplingParams:
        """``params`` as ``backend`` receives them: its sampling defaults for what the client
        left unset, the client's streaming flag; a parameter it cannot honour is a 400 here,
        before any call is made."""
        check_supported(backend, params)
        defaults = {k: v for k, v in backend.sampling_defaults.items() if k in params.defaulted}
        if defaults:
            params = replace(params, defaulted=params.defaulted - defaults.keys(), **defaults)
        return self.client_params(params)

    def last_call(self) -> CallRecord:
        return self.record.calls[-1]

    def client_params(self, params: SamplingParams) -> SamplingParams:
        """``params`` saying whether the client streams, whatever params a strategy built: the
        reliability wrapper reads it to decide whether a call's total time is bounded."""
        if params.client_stream == self.record.stream:
            return params
        return replace(params, client_stream=self.record.stream)

    def price_call(self, call: CallRecord) -> None:
        """Set a call's cost from its tokens at its backend's price. Every call is priced once,
        when it ends: here for calls recorded by :meth:`call_chat` / :meth:`call_completion`,
        and by the strategy for a call it records itself (a remote verify round)."""
        _price(call, self.resources.prices.get(call.backend))

    async def _record_call(
        self, backend: Backend, events: AsyncIterator[GenerationEvent], purpose: str, held: int = 0
    ) -> AsyncIterator[GenerationEvent]:
        call = CallRecord(backend=backend.name, model=backend.model_name, started_at=time.time(), purpose=purpose)
        self.record.calls.append(call)
        started = time.perf_counter()
        price = self.resources.prices.get(backend.name) or Price(input_per_1m=0.0, output_per_1m=0.0)
        completion_tokens = 0
        try:
            async for event in events:
                if isinstance(event, TokenChunk):
                    if call.ttft_ms is None and event.text:
                        call.ttft_ms = (time.perf_counter() - started) * 1000
                    completion_tokens += len(event.token_ids) or (1 if event.text else 0)
                    call.completion_tokens = completion_tokens
                else:
                    call.model = event.model
                    call.prompt_tokens = event.prompt_tokens
                    call.completion_tokens = event.completion_tokens
                    call.extra.update(event.extra_usage)
                    # Settle now: the consumer may never resume this generator after the last
                    # event, so the finally block below cannot be relied on for a completed call.
                    _settle(call, started, price)
                    self.release_call(held, call.cost_usd)
                yield event
        except GatewayError as exc:
            call.status = error_kind(exc)
            raise
        except BaseException as exc:  # cancellation (client gone) is recorded too
            call.status = "cancelled" if _is_cancel(exc) else error_kind(exc)
            raise
        finally:
            if call.latency_ms == 0.0:  # not settled above: failed, cut short or cancelled
                _settle(call, started, price)
                self.release_call(held, call.cost_usd)


def _settle(call: CallRecord, started: float, price: Price) -> None:
    call.latency_ms = (time.perf_counter() - started) * 1000
    _price(call, price)


def _price(call: CallRecord, price: Price | None) -> None:
    """The one pricing function: the record's totals are sums of these (accounting.finalize)."""
    call.cost_usd = price.cost(call.prompt_tokens, call.completion_tokens) if price is not None else 0.0


def _is_cancel(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError | GeneratorExit)


ConfigT = TypeVar("ConfigT", bound=StrategyBase)


class Strategy(ABC, Generic[ConfigT]):
    """A routing strategy for one public model."""

    def __init__(self, public_name: str, config: ConfigT, resources: GatewayResources) -> None:
        self.public_name = public_name
        self.config = config
        self.resources = resources

    async def start(self) -> None:
        """Load what the strategy needs (router weights, tokenizers) once per policy load."""

    @abstractmethod
    def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        """Answer a chat request: TokenChunk events, then exactly one AnswerDone."""

    def completion(
        self, prompt: CompletionPrompt, params: SamplingParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationEvent]:
        """Answer /v1/completions. Only strategies bound to one backend support it."""
        raise InvalidRequestError(
            f"model {self.public_name!r} ({self.config.__class__.__name__}) does not serve /v1/completions",
            param="model",
        )

    async def embed(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any], ctx: RequestContext
    ) -> EmbeddingResult:
        """Answer /v1/embeddings. Only strategies bound to one embedding backend support it."""
        raise InvalidRequestError(
            f"model {self.public_name!r} ({self.config.__class__.__name__}) does not serve /v1/embeddings",
            param="model",
        )

    def ready(self) -> bool:
        return True

    def delegates(self) -> tuple[list[str], list[str]]:
        """``(backends, models)`` a request to this strategy may reach directly — what its
        config names, plus what its bare target names resolve to in this policy. Siblings
        follow it (the privacy guard's "does this stay local?", delegation loops) instead of
        testing which strategy class they look at."""
        return list(self.config.referenced_backends()), list(self.config.referenced_models())
