"""The circuit breaker and the retry rules (gateway/reliability/circuit.py, retry.py), on a fake clock.

The guarded backend and fallback chains are in tests/test_reliability.py; the HTTP-level
behaviour in tests/test_reliability_http.py.
"""

from __future__ import annotations

import random

import pytest

from gateway.core.backend import (
    ChatMessage,
    SamplingParams,
)
from gateway.core.config import CircuitBreakerPolicy, RetryPolicy
from gateway.core.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.reliability.circuit import CircuitBreaker
from gateway.reliability.retry import backoff_s, is_retryable

MESSAGES = [ChatMessage(role="user", content="hi")]
PARAMS = SamplingParams(max_tokens=4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state_of(breaker: CircuitBreaker) -> str:
    return breaker.state


# --- circuit breaker ---------------------------------------------------------------------------


def test_circuit_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerPolicy(failure_threshold=3, window=100, cooldown_s=5), clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert state_of(breaker) == "closed"
    breaker.record_success()  # resets the consecutive count
    for _ in range(3):
        breaker.record_failure()
    assert state_of(breaker) == "open" and not breaker.allow()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert state_of(breaker) == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    breaker.record_failure()  # probe failed: open again, cool-down restarts
    assert state_of(breaker) == "open" and breaker.retry_after_s() == pytest.approx(5.0)
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert state_of(breaker) == "closed" and breaker.allow()


def test_circuit_opens_on_error_rate_only_once_the_window_is_full() -> None:
    breaker = CircuitBreaker(CircuitBreakerPolicy(failure_threshold=100, error_rate=0.5, window=4), FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state_of(breaker) == "closed"  # 2/3, but the window is not full
    breaker.record_success()
    assert state_of(breaker) == "closed"  # 2/4 = 0.5; the rate is checked when a failure arrives
    breaker.record_failure()  # window: S F S F = 0.5
    assert state_of(breaker) == "open"


def test_cancelled_probe_releases_the_half_open_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerPolicy(failure_threshold=1, cooldown_s=1), clock)
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.record_neutral()
    assert breaker.allow()


# --- retry rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "retryable"), [
    (UpstreamUnavailableError("down", code="upstream_unreachable"), True),
    (UpstreamUnavailableError("503", upstream_status=503), True),
    (UpstreamError("500", upstream_status=500), True),
    (UpstreamError("broken stream", code="upstream_stream_error"), True),
    (UpstreamTimeoutError("504", upstream_status=504), True),
    (UpstreamError("auth", upstream_status=401, code="upstream_auth_failed"), False),
    (UpstreamUnavailableError("open", code="circuit_open"), False),
    (RateLimitError("slow down", retry_after_s=1), True),
    (RateLimitError("slow down"), False),
    (InvalidRequestError("bad"), False),
])
def test_retryable_errors(error: GatewayError, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3)
    rng = random.Random(1)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)]:
        draws = [backoff_s(policy, attempt, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > cap * 0.8 and min(draws) < cap * 0.2  # spread, not a fixed delay
