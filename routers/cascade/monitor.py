"""A running confidence check over a stream of token logprobs.

Used for early exit (stop a doomed small-model attempt as soon as escalation is certain) and
for the hand-off mode (keep streaming the small model only while the check holds).
"""

from __future__ import annotations

from collections import deque

from gateway.core.backend import TokenLogprob
from routers.cascade.config import EarlyExit


class RunningCheck:
    def __init__(self, settings: EarlyExit) -> None:
        self.settings = settings
        self._window: deque[float] = deque(maxlen=settings.window)
        self._total = 0.0
        self.failed_at: int | None = None
        self.seen = 0

    def add(self, token: TokenLogprob) -> bool:
        """Record one token; True while the answer is still acceptable."""
        if self.failed_at is not None:
            return False
        self.seen += 1
        if len(self._window) == self._window.maxlen:
            self._total -= self._window[0]
        self._window.append(token.logprob)
        self._total += token.logprob
        floor = self.settings.token_floor
        too_unlikely = floor is not None and token.logprob < floor
        full = len(self._window) == self._window.maxlen
        if too_unlikely or (full and self._total / len(self._window) < self.settings.floor):
            self.failed_at = self.seen
            return False
        return True
