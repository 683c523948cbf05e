"""``GuardedBackend``: timeouts, retries and a circuit breaker around any :class:`Backend`.

Every backend the runtime builds is wrapped in one (``gateway/runtime.py``). Per call:

1. the circuit breaker is asked first; an open circuit answers at once with
   ``UpstreamUnavailableError(code="circuit_open")`` — a dead upstream costs a fast error
   (and a fallback, when the policy declares one), not a timeout per request;
2. the first event must arrive within ``timeouts.first_token`` (connect time included);
   retryable errors before it are retried with jittered backoff, all attempts and waits
   inside that same budget (:mod:`gateway.reliability.retry`);
3. after the first event no retry is ever made (the client may have seen tokens); the gap
   between two events is bounded by ``timeouts.idle`` and, when the client did not ask for a
   stream (``SamplingParams.client_stream``, set on every call by the request's context), the
   whole call by ``timeouts.total``. A timeout raises ``UpstreamTimeoutError``.

Outcomes feed the breaker: an upstream failure (5xx, timeout, unreachable) counts against
it, a finished generation for it, a cancelled call or a client error not at all. A backend
whose tokens never leave the machine (``is_local``) has no breaker: an in-process model is
never "down", only busy, and opening a circuit on its queueing delay would turn an overload
into an outage of every model that falls back to it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    EmbeddingResult,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenScorer,
)
from gateway.core.config import CircuitBreakerPolicy, RetryPolicy, Timeouts
from gateway.core.errors import GatewayError, UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError
from gateway.reliability.circuit import CircuitBreaker
from gateway.reliability.retry import counts_as_upstream_failure, is_retryable, retry_delay_s

logger = logging.getLogger(__name__)

StreamFactory = Callable[[], AsyncIterator[GenerationEvent]]


class GuardedBackend(Backend):
    def __init__(
        self, inner: Backend, timeouts: Timeouts, retry: RetryPolicy, circuit: CircuitBreakerPolicy,
        *, rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.timeouts = timeouts
        self.retry = retry
        self.breaker = CircuitBreaker(circuit, enabled=not inner.is_local)
        self._rng = rng or random.Random()

    # --- delegation: strategies see the inner backend's capabilities --------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally (e.g. .model, .tokenizer, ._engine).
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.inner.capabilities

    def token_scorer(self) -> TokenScorer | None:
        return self.inner.token_scorer()

    @property
    def sampling_defaults(self) -> Mapping[str, Any]:
        return self.inner.sampling_defaults

    async def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any]) -> EmbeddingResult:
        """One embeddings call under the breaker and the first-token budget (it has no stream)."""
        if not self.breaker.allow():
            raise self._circuit_open_error()
        try:
            async with asyncio.timeout(self.timeouts.first_token):
                result = await self.inner.embed(inputs, extra)
        except TimeoutError:
            self.breaker.record_failure()
            raise UpstreamTimeoutError(f"backend {self.name!r} gave no embeddings within "
                                       f"{self.timeouts.first_token:g}s", backend=self.name) from None
        except GatewayError as exc:
            self._settle_error(exc)
            raise
        except BaseException:
            self.breaker.record_neutral()
            raise
        self.breaker.record_success()
        return result

    @property
    def circuit_state(self) -> str:
        return self.breaker.state

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def render_chat_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        return await self.inner.render_chat_prompt(messages)

    async def tokenize(self, text: str) -> list[int] | None:
        return await self.inner.tokenize(text)

    def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        return self._guard(lambda: self.inner.stream_chat(messages, params), params.client_stream)

    def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        return self._guard(lambda: self.inner.stream_completion(prompt, params), params.client_stream)

    # --- the guard ------------------------------------------------------------------------------

    async def _guard(self, open_call: StreamFactory, client_stream: bool) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = math.inf if client_stream else started + self.timeouts.total
        first_deadline = min(started + self.timeouts.first_token, total_deadline)
        stream, event = await self._first_event(open_call, first_deadline)
        settled = False
        try:
            while True:
                if isinstance(event, GenerationDone):
                    # Settle before yielding: the consumer may never resume us after the last event.
                    self.breaker.record_success()
                    settled = True
                    yield event
                    return
                yield event
                event = await self._next_event(stream, total_deadline)
        except GatewayError as exc:
            self._settle_error(exc)
            settled = True
            raise
        finally:
            if not settled:
                self.breaker.record_neutral()
            await _close(stream)

    async def _first_event(
        self, open_call: StreamFactory, deadline: float
    ) -> tuple[AsyncIterator[GenerationEvent], GenerationEvent]:
        loop = asyncio.get_running_loop()
        last_error: GatewayError | None = None
        attempt = 0
        while True:
            attempt += 1
            if not self.breaker.allow():
                raise last_error or self._circuit_open_error()
            stream = open_call()
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    first = await anext(stream)
                return stream, first
            except TimeoutError:
                await _close(stream)
                self.breaker.record_failure()
                raise UpstreamTimeoutError(
                    f"backend {self.name!r} gave no first token within {self.timeouts.first_token:g}s"
                    f" ({attempt} attempt{'s' if attempt > 1 else ''})", backend=self.name,
                ) from None
            except StopAsyncIteration:
                self.breaker.record_failure()
                raise UpstreamError(f"backend {self.name!r} ended without an answer", backend=self.name) from None
            except GatewayError as exc:
                await _close(stream)
                self._settle_error(exc)
                last_error = exc
                if not is_retryable(exc) or attempt >= self.retry.max_attempts:
                    raise
                delay = retry_delay_s(exc, self.retry, attempt, self._rng)
                if loop.time() + delay >= deadline:
                    raise
                logger.info("backend %s: %s; retry %d in %.2fs", self.name, exc.code, attempt, delay)
                await asyncio.sleep(delay)
            except BaseException:
                self.breaker.record_neutral()
                raise

    async def _next_event(self, stream: AsyncIterator[GenerationEvent], total_deadline: float) -> GenerationEvent:
        loop = asyncio.get_running_loop()
        remaining_total = total_deadline - loop.time()
        limit = min(self.timeouts.idle, remaining_total)
        try:
            async with asyncio.timeout(limit):
                return await anext(stream)
        except TimeoutError:
            stage = "idle gap" if limit == self.timeouts.idle else "total time"
            raise UpstreamTimeoutError(
                f"backend {self.name!r} exceeded its {stage} limit ({limit:g}s) mid-answer", backend=self.name,
            ) from None
        except StopAsyncIteration:
            raise UpstreamError(f"backend {self.name!r} stopped mid-answer", backend=self.name,
                                code="upstream_stream_error") from None

    def _settle_error(self, exc: GatewayError) -> None:
        if counts_as_upstream_failure(exc):
            self.breaker.record_failure()
        else:
            self.breaker.record_neutral()

    def _circuit_open_error(self) -> UpstreamUnavailableError:
        wait = self.breaker.retry_after_s()
        error = UpstreamUnavailableError(
            f"backend {self.name!r} is failing; its circuit is open (next probe in {wait:.0f}s)",
            backend=self.name, code="circuit_open",
        )
        error.headers["retry-after"] = str(max(1, math.ceil(wait)))
        return error


async def _close(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # a stream that failed may fail again on close; nothing to add
            logger.debug("closing a failed stream raised", exc_info=True)
