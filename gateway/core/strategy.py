"""The routing-strategy contract.

A strategy is built once per policy load from its config (a :mod:`policies.strategies`
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
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.config import Price, StrategyBase
from gateway.core.errors import GatewayError, InvalidRequestError, error_kind
from gateway.core.record import CallRecord, RequestRecord


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """End of a strategy's answer: what the client's final chunk / usage reports."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str


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

    def backend(self, name: str) -> Backend:
        return self.backends[name]


class RequestContext:
    """Per-request state a strategy writes to: the accounting record and response headers."""

    def __init__(self, record: RequestRecord, resources: GatewayResources) -> None:
        self.record = record
        self.resources = resources
        self.response_headers: dict[str, str] = {}

    def set_route(self, route: str) -> None:
        self.record.route = route

    async def call_chat(
        self, backend_name: str, messages: Sequence[ChatMessage], params: SamplingParams,
        *, purpose: str = "answer",
    ) -> AsyncIterator[GenerationEvent]:
        backend = self.resources.backend(backend_name)
        async for event in self._record_call(backend, backend.stream_chat(messages, params), purpose):
            yield event

    async def call_completion(
        self, backend_name: str, prompt: CompletionPrompt, params: SamplingParams,
        *, purpose: str = "answer",
    ) -> AsyncIterator[GenerationEvent]:
        backend = self.resources.backend(backend_name)
        async for event in self._record_call(backend, backend.stream_completion(prompt, params), purpose):
            yield event

    def last_call(self) -> CallRecord:
        return self.record.calls[-1]

    async def _record_call(
        self, backend: Backend, events: AsyncIterator[GenerationEvent], purpose: str
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
                yield event
        except GatewayError as exc:
            call.status = error_kind(exc)
            raise
        except BaseException as exc:  # cancellation (client gone) is recorded too
            call.status = "cancelled" if _is_cancel(exc) else error_kind(exc)
            raise
        finally:
            if call.latency_ms == 0.0:
                _settle(call, started, price)


def _settle(call: CallRecord, started: float, price: Price) -> None:
    call.latency_ms = (time.perf_counter() - started) * 1000
    call.cost_usd = price.cost(call.prompt_tokens, call.completion_tokens)


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

    def ready(self) -> bool:
        return True
