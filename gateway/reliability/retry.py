"""Which upstream errors are worth another attempt, and how long to wait before it.

A retry is only ever made before the call produced its first event, so the client never
sees a token twice; the caller (:mod:`gateway.reliability.guarded`) enforces that and the
time budget. Retryable: the upstream could not be reached or was unavailable (connect
errors, 502, 503), any other 5xx or a broken connection, an upstream timeout (504), and 429
*with* ``Retry-After`` (the wait it asks for is honoured). Everything else — a request the
upstream rejected, credentials, a 429 without a hint — is final.

An upstream 4xx (400, 401, 403, 404, 422, ...; all but 408 and 429) says the request or the
gateway's configuration is wrong, not that the upstream is unhealthy: it is never retried and
never counts against the circuit breaker (a wrong API key must not open the circuit and turn
into ``circuit_open`` for everyone).
"""

from __future__ import annotations

import contextlib
import random

from gateway.core.config import RetryPolicy
from gateway.core.errors import GatewayError, RateLimitError, UpstreamError

NOT_RETRYABLE_CODES = frozenset({"circuit_open", "upstream_auth_failed"})
# 4xx statuses that do say something about the upstream's health or load.
UPSTREAM_CONDITION_4XX = frozenset({408, 429})


def is_client_side(exc: BaseException) -> bool:
    """An upstream's 4xx about the request or our credentials (see the module docstring)."""
    status = getattr(exc, "upstream_status", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in UPSTREAM_CONDITION_4XX


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RateLimitError):
        return "retry-after" in exc.headers
    if isinstance(exc, UpstreamError):
        if exc.code in NOT_RETRYABLE_CODES or is_client_side(exc):
            return False
        # upstream_status None: transport failure or a broken stream, both worth a retry.
        return exc.upstream_status is None or exc.upstream_status >= 500
    return False


def counts_as_upstream_failure(exc: BaseException) -> bool:
    """Whether an error says the upstream is unhealthy (feeds the circuit breaker)."""
    return isinstance(exc, UpstreamError) and exc.code != "circuit_open" and not is_client_side(exc)


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Wait before attempt ``attempt + 1`` (``attempt`` >= 1): exponential, full jitter.

    Full jitter (a uniform draw up to the exponential cap) spreads the retries of many
    clients that failed at the same moment, instead of having them hit the upstream again
    in lock-step.
    """
    cap = min(policy.max_backoff_s, policy.initial_backoff_s * (2 ** (attempt - 1)))
    return rng.uniform(0.0, cap)


def retry_delay_s(exc: GatewayError, policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """The wait before the next attempt: the backoff, or longer when the upstream asked for it."""
    delay = backoff_s(policy, attempt, rng)
    if isinstance(exc, RateLimitError):
        with contextlib.suppress(ValueError):
            delay = max(delay, float(exc.headers.get("retry-after", "0")))
    return delay
