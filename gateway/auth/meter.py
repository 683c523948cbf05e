"""A virtual key's budget, asked before every upstream call of one request.

Admission reserves the worst case of the model's own route (:mod:`gateway.auth.estimate`).
A request can reach further than that estimate foresaw: a top-level fallback model after its
primary failed, a cascade's hand-off continuation with a longer prompt, a speculative verify
round, a tier a rules strategy resolved at start. :class:`BudgetMeter` is the request's
:class:`~gateway.core.strategy.CallBudget`: before each call it adds the call's own worst
case to what the request has committed (the worst case of calls still running plus the real
cost of calls that ended); if that is more than the request holds in the key store it grows
the reservation first (one atomic store step, :meth:`KeyStore.extend`) — or refuses the call
with 429 (``insufficient_quota`` / ``budget_reserved``) before anything is sent upstream.
So every call any route makes has been paid for from the budget before it starts, on every
replica sharing the store. Free calls (the in-process SLM) cost nothing and skip the store.

Retries of a call happen before its first token and bill only the attempt that answers (the
record counts tokens received), so the call's one hold covers all its attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.auth import limits
from gateway.auth.estimate import call_prompt_tokens, call_worst_case
from gateway.auth.keys import VirtualKey, nano_to_usd, usd_to_nano
from gateway.auth.store import KeyStore
from gateway.core.backend import ChatMessage, CompletionPrompt
from gateway.core.errors import AuthenticationError, RateLimitError
from policies.schema import Policy


class BudgetMeter:
    def __init__(self, store: KeyStore, key: VirtualKey, reservation_id: str, reserved_nano: int,
                 policy: Policy) -> None:
        self._store = store
        self._key = key
        self._reservation_id = reservation_id
        self._policy = policy
        self.reserved_nano = reserved_nano  # what the store holds for this request
        self.committed_nano = 0  # open calls at their worst case + ended calls at their real cost
        self.extensions = 0
        self._lock = asyncio.Lock()  # a request's calls may start concurrently (one extension at a time)

    async def hold(self, backend: str, prompt: Sequence[ChatMessage] | CompletionPrompt,
                   max_tokens: int | None) -> int:
        need = call_worst_case(self._policy, backend, call_prompt_tokens(prompt), max_tokens)
        if need <= 0:
            return 0
        async with self._lock:
            shortfall = self.committed_nano + need - self.reserved_nano
            if shortfall > 0:
                admission = await self._store.extend(self._key.id, self._reservation_id, shortfall)
                if not admission.ok:
                    raise self._refusal(admission, backend, need)
                self.reserved_nano += shortfall
                self.extensions += 1
            self.committed_nano += need
        return need

    def release(self, held: int, cost_usd: float) -> None:
        self.committed_nano += usd_to_nano(cost_usd) - held

    def _refusal(self, admission: limits.Admission, backend: str, need: int) -> Exception:
        key = self._key
        if admission.outcome in (limits.UNKNOWN, limits.REVOKED, limits.EXPIRED):
            gone = {limits.UNKNOWN: "no longer exists", limits.REVOKED: "has been revoked",
                    limits.EXPIRED: "has expired"}[admission.outcome]
            return AuthenticationError(f"The API key {key.id} {gone}.", code=f"key_{admission.outcome}")
        budget = nano_to_usd(key.budget_nano or 0)
        what = f"the next upstream call of this request (backend {backend!r}) could cost up to ${nano_to_usd(need):.6f}"
        if admission.outcome == limits.BUDGET:
            return RateLimitError(f"Budget exhausted for key {key.id}: ${budget:.6f} budget; {what}. Raise the "
                                  "key's budget or lower max_tokens.", code="insufficient_quota")
        return RateLimitError(f"Budget of key {key.id} (${budget:.6f}) is held by requests in flight; {what}. "
                              "Retry once they finish.", retry_after_s=admission.retry_after_s or 1.0,
                              code="budget_reserved")
