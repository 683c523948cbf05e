"""Admission decisions shared by both key stores, and the rate-limit headers they produce.

The Redis store runs the same rules inside one Lua script (see ``redis_keys.py``); the
SQLite store calls :func:`decide` inside one transaction. Rules, in order:

1. unknown / revoked / expired key -> refused (401);
2. RPM: requests admitted in the last ``WINDOW_S`` seconds (a sliding log) must be < rpm;
3. TPM: tokens in the window (estimates for requests still running, real counts once they
   settle) plus this request's estimate must be <= tpm; a request whose estimate alone is
   over tpm can never pass and says so;
4. budget: ``spent + this reservation`` over the budget -> exhausted (it will not come back);
   ``spent + in-flight reservations + this one`` over it -> busy (retry once they settle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WINDOW_S = 60.0
RESERVATION_TTL_S = 900.0  # a reservation a crashed replica never settled is released after this

OK = "ok"
UNKNOWN = "unknown"
REVOKED = "revoked"
EXPIRED = "expired"
RPM = "rpm"
TPM = "tpm"
TPM_TOO_LARGE = "tpm_too_large"
BUDGET = "budget"
BUDGET_BUSY = "budget_busy"


@dataclass(frozen=True, slots=True)
class LimitState:
    """A key's limits as seen by one admission (after it, when it was admitted)."""

    rpm: int | None = None
    requests_in_window: int = 0
    reset_requests_s: float = 0.0
    tpm: int | None = None
    tokens_in_window: int = 0
    reset_tokens_s: float = 0.0
    budget_nano: int | None = None
    spent_nano: int = 0
    reserved_nano: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    outcome: str
    retry_after_s: float | None = None
    limits: LimitState = LimitState()

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def retry_after_requests(times: Sequence[float], rpm: int, now: float) -> float:
    """Seconds until the window holds fewer than ``rpm`` requests (``times`` ascending)."""
    excess = len(times) - rpm  # this many must leave before one more fits
    return max(0.0, times[excess] + WINDOW_S - now) if excess >= 0 else 0.0


def retry_after_tokens(events: Sequence[tuple[float, int]], need: int, tpm: int, now: float) -> float:
    """Seconds until ``need`` more tokens fit under ``tpm`` (``events`` ascending by time)."""
    used = sum(tokens for _, tokens in events)
    for at, tokens in events:
        if used + need <= tpm:
            break
        used -= tokens
        if used + need <= tpm:
            return max(0.0, at + WINDOW_S - now)
    return 0.0


def decide(
    *, rpm: int | None, tpm: int | None, budget_nano: int | None, spent_nano: int, reserved_nano: int,
    request_times: Sequence[float], token_events: Sequence[tuple[float, int]], cost_nano: int, tokens: int,
    now: float,
) -> Admission:
    """Rules 2-4 for a key already known to be valid (see the module docstring)."""
    used_tokens = sum(t for _, t in token_events)
    if rpm is not None and len(request_times) >= rpm:
        return Admission(RPM, retry_after_requests(request_times, rpm, now))
    if tpm is not None and tokens > tpm:
        return Admission(TPM_TOO_LARGE)
    if tpm is not None and used_tokens + tokens > tpm:
        return Admission(TPM, retry_after_tokens(token_events, tokens, tpm, now))
    if budget_nano is not None and spent_nano + cost_nano > budget_nano:
        return Admission(BUDGET)
    if budget_nano is not None and spent_nano + reserved_nano + cost_nano > budget_nano:
        return Admission(BUDGET_BUSY, 1.0)
    oldest_request = request_times[0] if request_times else now
    oldest_tokens = token_events[0][0] if token_events else now
    return Admission(OK, limits=LimitState(
        rpm=rpm, requests_in_window=len(request_times) + 1, reset_requests_s=max(0.0, oldest_request + WINDOW_S - now),
        tpm=tpm, tokens_in_window=used_tokens + tokens, reset_tokens_s=max(0.0, oldest_tokens + WINDOW_S - now),
        budget_nano=budget_nano, spent_nano=spent_nano, reserved_nano=reserved_nano + cost_nano,
    ))


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def ratelimit_headers(limits: LimitState) -> dict[str, str]:
    """OpenAI-style ``x-ratelimit-*`` headers for the limits the key has (none for unlimited)."""
    headers: dict[str, str] = {}
    if limits.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - limits.requests_in_window))
        headers["x-ratelimit-reset-requests"] = format_reset(limits.reset_requests_s)
    if limits.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - limits.tokens_in_window))
        headers["x-ratelimit-reset-tokens"] = format_reset(limits.reset_tokens_s)
    if limits.budget_nano is not None:
        remaining = max(0, limits.budget_nano - limits.spent_nano - limits.reserved_nano) / 1e9
        headers["x-slm-gateway-budget-remaining-usd"] = f"{remaining:.8f}"
    return headers
