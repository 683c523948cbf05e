"""A per-backend circuit breaker: a dead upstream costs a fast error, not a timeout per request.

States (the names ``/ready`` and ``/metrics`` report)::

    closed     calls pass; outcomes are counted
    open       calls are refused at once (``circuit_open``) until ``cooldown_s`` has passed
    half_open  one probe call is let through; success closes the circuit, failure re-opens it

The circuit opens after ``failure_threshold`` consecutive failures, or when the share of
failures among the last ``window`` calls reaches ``error_rate`` (evaluated once the window
is full, so a single early failure cannot open it). Only upstream failures count (5xx,
timeouts, unreachable); a client's bad request or a cancelled call is *neutral*.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from gateway.core.config import CircuitBreakerPolicy

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, config: CircuitBreakerPolicy, clock: Callable[[], float] = time.monotonic, *, enabled: bool = True,
    ) -> None:
        self.config = config
        self.enabled = enabled  # a disabled breaker stays closed whatever happens
        self._clock = clock
        self._state: CircuitState = "closed"
        self._consecutive_failures = 0
        self._outcomes: deque[bool] = deque(maxlen=config.window)  # True = failure
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cool-down has passed reads as half-open."""
        if self._state == "open" and self._clock() - self._opened_at >= self.config.cooldown_s:
            return "half_open"
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it is not open)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self.config.cooldown_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call start now? In half-open state this claims the single probe slot."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        if self._probe_in_flight:
            return False
        self._state = "half_open"
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        if self._state != "closed":
            self._close()
            return
        self._consecutive_failures = 0
        self._outcomes.append(False)

    def record_failure(self) -> None:
        if not self.enabled:
            return
        if self._state != "closed":  # the probe failed (or a straggler from before opening)
            self._open()
            return
        self._consecutive_failures += 1
        self._outcomes.append(True)
        if self._consecutive_failures >= self.config.failure_threshold or self._rate_exceeded():
            self._open()

    def record_neutral(self) -> None:
        """A call ended without telling anything about the upstream (cancelled, client error)."""
        self._probe_in_flight = False

    def _rate_exceeded(self) -> bool:
        window = self._outcomes
        return len(window) == window.maxlen and sum(window) / len(window) >= self.config.error_rate

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._probe_in_flight = False
        self.times_opened += 1

    def _close(self) -> None:
        self._state = "closed"
        self._consecutive_failures = 0
        self._outcomes.clear()
        self._probe_in_flight = False
