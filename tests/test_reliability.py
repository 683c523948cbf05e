"""The guarded backend and fallback chains, on scripted parts.

The circuit breaker and retry rules are in tests/test_reliability_circuit.py; the HTTP-level
behaviour (real gateway process, real upstream over loopback) in tests/test_reliability_http.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.config import CircuitBreakerPolicy, RetryPolicy, Timeouts
from gateway.core.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.core.record import RequestRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext, Strategy, StrategyEvent
from gateway.reliability.fallback import FALLBACK_HEADER, FallbackChain
from gateway.reliability.guarded import GuardedBackend
from policies.loader import PolicyError, parse_policy
from routers.static.config import StaticStrategy

MESSAGES = [ChatMessage(role="user", content="hi")]
PARAMS = SamplingParams(max_tokens=4)


# --- guarded backend ---------------------------------------------------------------------------

Step = Callable[[], Awaitable[None]]


class ScriptedBackend(Backend):
    """Each call follows the next script: a list of events / errors / delays."""

    def __init__(self, scripts: list[list[Any]], local: bool = False) -> None:
        super().__init__("scripted")
        self.local = local
        self.scripts = scripts
        self.calls = 0
        self.model = "scripted-weights"  # reached through GuardedBackend.__getattr__

    @property
    def model_name(self) -> str:
        return "scripted-model"

    @property
    def is_local(self) -> bool:
        return self.local

    async def _run(self) -> AsyncIterator[GenerationEvent]:
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        for step in script:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            yield step

    def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        return self._run()

    def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        return self._run()


OK = [TokenChunk("a"), TokenChunk("b"), GenerationDone("stop", 1, 2, "scripted-model")]


def inner_calls(backend: GuardedBackend) -> int:
    assert isinstance(backend.inner, ScriptedBackend)
    return backend.inner.calls


def guarded(scripts: list[list[Any]], *, first_token: float = 2.0, total: float = 5.0, idle: float = 1.0,
            attempts: int = 3, threshold: int = 5, local: bool = False) -> GuardedBackend:
    return GuardedBackend(
        ScriptedBackend(scripts, local), Timeouts(connect=1, first_token=first_token, total=total, idle=idle),
        RetryPolicy(max_attempts=attempts, initial_backoff_s=0.01, max_backoff_s=0.02),
        CircuitBreakerPolicy(failure_threshold=threshold, window=50, cooldown_s=60), rng=random.Random(0),
    )


async def drain(backend: Backend, streaming: bool = False) -> list[GenerationEvent]:
    params = replace(PARAMS, client_stream=streaming)  # what RequestContext passes for the client
    return [event async for event in backend.stream_chat(MESSAGES, params)]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_guard_delegates_to_the_inner_backend() -> None:
    backend = guarded([OK])
    assert backend.inner.name == "scripted" and backend.name == "scripted"
    assert backend.model == "scripted-weights" and backend.model_name == "scripted-model"
    assert not backend.is_local and backend.circuit_state == "closed"


def test_retries_before_the_first_token_then_answers() -> None:
    backend = guarded([[UpstreamUnavailableError("down", upstream_status=503)],
                       [UpstreamError("boom", upstream_status=500)], OK])
    events = run(drain(backend))
    assert [getattr(e, "text", None) for e in events[:2]] == ["a", "b"]
    assert inner_calls(backend) == 3


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    backend = guarded([[UpstreamError("boom", upstream_status=500)]], attempts=2)
    with pytest.raises(UpstreamError, match="boom"):
        run(drain(backend))
    assert inner_calls(backend) == 2


def test_client_errors_are_not_retried() -> None:
    backend = guarded([[InvalidRequestError("bad request")], OK])
    with pytest.raises(InvalidRequestError):
        run(drain(backend))
    assert inner_calls(backend) == 1
    assert backend.circuit_state == "closed"


def test_no_retry_once_a_token_was_produced() -> None:
    backend = guarded([[TokenChunk("a"), UpstreamError("died", upstream_status=500)], OK])
    with pytest.raises(UpstreamError, match="died"):
        run(drain(backend))
    assert inner_calls(backend) == 1


def test_rate_limit_wait_longer_than_the_budget_is_not_waited() -> None:
    backend = guarded([[RateLimitError("slow", retry_after_s=30)], OK], first_token=1.0)
    with pytest.raises(RateLimitError):
        run(drain(backend))
    assert inner_calls(backend) == 1


def test_first_token_timeout() -> None:
    backend = guarded([[5.0, *OK]], first_token=0.2)
    loop_start = asyncio.run(_timed(drain(backend)))
    assert loop_start[0] == "UpstreamTimeoutError" and loop_start[1] < 1.0


def test_idle_gap_timeout_mid_stream() -> None:
    backend = guarded([[TokenChunk("a"), 3.0, *OK]], idle=0.2)
    name, elapsed = asyncio.run(_timed(drain(backend, streaming=True)))
    assert name == "UpstreamTimeoutError" and elapsed < 1.0


def test_total_timeout_applies_to_non_streamed_calls_only() -> None:
    slow = [TokenChunk("a"), 0.15, TokenChunk("b"), 0.15, TokenChunk("c"), 0.15,
            GenerationDone("stop", 1, 3, "m")]
    name, _ = asyncio.run(_timed(drain(guarded([slow], total=0.3, idle=1.0), streaming=False)))
    assert name == "UpstreamTimeoutError"
    name, _ = asyncio.run(_timed(drain(guarded([slow], total=0.3, idle=1.0), streaming=True)))
    assert name == "ok"


def test_the_request_context_tells_the_wrapper_whether_the_client_streams() -> None:
    """The client's ``stream`` reaches the wrapper explicitly, whatever params the strategy built."""
    slow = [TokenChunk("a"), 0.15, TokenChunk("b"), 0.15, TokenChunk("c"), 0.15,
            GenerationDone("stop", 1, 3, "m")]
    outcomes = {}
    for stream in (False, True):
        backend = guarded([slow], total=0.3, idle=1.0)
        ctx = RequestContext(RequestRecord("r", "m", "chat", stream=stream),
                             GatewayResources(backends={backend.name: backend}, prices={}))

        async def consume(context: RequestContext = ctx, name: str = backend.name) -> list[GenerationEvent]:
            return [event async for event in context.call_chat(name, MESSAGES, PARAMS)]

        outcomes[stream] = asyncio.run(_timed(consume()))[0]
    assert outcomes == {False: "UpstreamTimeoutError", True: "ok"}


async def _timed(coro: Awaitable[Any]) -> tuple[str, float]:
    started = asyncio.get_running_loop().time()
    try:
        await coro
    except GatewayError as exc:
        return type(exc).__name__, asyncio.get_running_loop().time() - started
    return "ok", asyncio.get_running_loop().time() - started


def test_open_circuit_fails_fast_without_calling_the_upstream() -> None:
    backend = guarded([[UpstreamUnavailableError("down", code="upstream_unreachable")]], attempts=1, threshold=2)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailableError, match="down"):
            run(drain(backend))
    assert backend.circuit_state == "open" and inner_calls(backend) == 2
    with pytest.raises(UpstreamUnavailableError) as info:
        run(drain(backend))
    assert info.value.code == "circuit_open" and "retry-after" in info.value.headers
    assert inner_calls(backend) == 2


# --- fallback chain ----------------------------------------------------------------------------


class ScriptedStrategy(Strategy[StaticStrategy]):
    def __init__(self, name: str, script: list[Any]) -> None:
        resources = GatewayResources(backends={}, prices={})
        super().__init__(name, StaticStrategy(type="static", backend=name), resources)
        self.script = script

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        ctx.set_route(self.public_name)
        for step in self.script:
            if isinstance(step, BaseException):
                raise step
            yield step


ANSWER: list[Any] = [TokenChunk("hello"), AnswerDone("stop", 1, 1, "m")]


def _ask(chain: FallbackChain) -> tuple[list[StrategyEvent], RequestContext]:
    ctx = RequestContext(RequestRecord("req-1", "llm", "chat", False), chain.resources)
    request = ChatRequestView(messages=MESSAGES, params=PARAMS, stream=False)

    async def go() -> list[StrategyEvent]:
        return [event async for event in chain.chat(request, ctx)]

    return asyncio.run(go()), ctx


def test_fallback_answers_when_the_primary_fails_before_its_first_token() -> None:
    chain = FallbackChain(ScriptedStrategy("llm", [UpstreamUnavailableError("open", code="circuit_open")]),
                          [ScriptedStrategy("mid", [UpstreamTimeoutError("slow")]), ScriptedStrategy("slm", ANSWER)])
    events, ctx = _ask(chain)
    assert events == ANSWER
    assert ctx.record.fallback == "slm" and ctx.response_headers[FALLBACK_HEADER] == "slm"
    assert ctx.record.route == "slm" and chain.public_name == "llm"


def test_no_fallback_for_client_errors_or_after_the_first_token() -> None:
    chain = FallbackChain(ScriptedStrategy("llm", [InvalidRequestError("bad")]), [ScriptedStrategy("slm", ANSWER)])
    with pytest.raises(InvalidRequestError):
        _ask(chain)
    chain = FallbackChain(ScriptedStrategy("llm", [TokenChunk("x"), UpstreamError("died")]),
                          [ScriptedStrategy("slm", ANSWER)])
    with pytest.raises(UpstreamError, match="died"):
        _ask(chain)


def test_last_fallback_error_reaches_the_client() -> None:
    chain = FallbackChain(ScriptedStrategy("llm", [UpstreamError("a")]),
                          [ScriptedStrategy("slm", [UpstreamError("b")])])
    with pytest.raises(UpstreamError, match="b"):
        _ask(chain)


# --- policy ------------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "backends": {"slm": {"type": "local"}, "llm": {"type": "openai", "base_url": "http://x/v1", "model": "m",
                                                    "retry": {"max_attempts": 3},
                                                    "circuit_breaker": {"failure_threshold": 2}}},
    "models": {"slm": {"type": "static", "backend": "slm"}, "llm": {"type": "static", "backend": "llm"}},
}


def test_policy_reliability_sections() -> None:
    policy = parse_policy({**BASE, "fallbacks": {"llm": ["slm"]}})
    llm = policy.backends["llm"]
    assert llm.retry.max_attempts == 3 and llm.circuit_breaker.failure_threshold == 2
    assert policy.backends["slm"].retry.max_attempts == 2  # documented default
    assert policy.fallbacks == {"llm": ["slm"]}


@pytest.mark.parametrize(("fallbacks", "problem"), [
    ({"llm": ["nope"]}, "fallbacks.llm[0]: unknown model 'nope'"),
    ({"ghost": ["slm"]}, "fallbacks.ghost: unknown model 'ghost'"),
    ({"llm": ["llm"]}, "own fallback"),
    ({"llm": ["slm", "slm"]}, "twice"),
])
def test_policy_fallback_names_are_checked(fallbacks: dict[str, list[str]], problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({**BASE, "fallbacks": fallbacks})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_policy_rejects_unknown_retry_keys() -> None:
    data = {**BASE, "backends": {**BASE["backends"], "slm": {"type": "local", "retry": {"attempts": 3}}}}
    with pytest.raises(PolicyError):
        parse_policy(data)


def test_in_process_backends_have_no_circuit() -> None:
    backend = guarded([[UpstreamTimeoutError("busy")]], attempts=1, threshold=1, local=True)
    for _ in range(3):
        with pytest.raises(UpstreamTimeoutError, match="busy"):
            run(drain(backend))
    assert backend.circuit_state == "closed" and inner_calls(backend) == 3
