"""What the request path calls: authenticate a bearer key, admit a request, settle it.

* :meth:`KeyEnforcer.authenticate` (the /v1 middleware): the admin key, or a virtual key that
  is neither revoked nor expired. Nothing is cached between requests, so a revocation stops a
  key at once on every replica sharing the store.
* :func:`admit_request` (chat / completions, after validation, before any upstream call):
  the key's model allow-list (403), then one atomic store step checks RPM / TPM / budget and
  reserves the worst-case cost (:mod:`gateway.auth.estimate`). It returns a :class:`Ticket`.
* :meth:`Ticket.settle` (``RequestScope.finish``, which runs exactly once for every request:
  success, error, stream cut short, client gone): replaces the reservation by the record's
  real cost and real tokens. It runs in its own task, shielded, because Starlette cancels a
  streaming response's task when the client disconnects and an await in that task's
  ``finally`` would be cancelled too — which is how streamed requests end up billed $0.
  The settlement is journaled with the record before it is tried; if the store fails it, the
  accounting sweeper applies it later (settlement is idempotent by reservation id).
* :class:`~gateway.auth.meter.BudgetMeter` (keys with a budget): every upstream call of the
  request is held against the reservation before it starts, growing it or refusing the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from gateway.accounting.journal import Settlement
from gateway.auth import limits
from gateway.auth.estimate import worst_case
from gateway.auth.keys import VirtualKey, looks_like_virtual_key, nano_to_usd, usd_to_nano
from gateway.auth.meter import BudgetMeter
from gateway.auth.principal import Principal, principal_of
from gateway.auth.store import KeyStore
from gateway.core.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from gateway.core.protocol import new_id
from gateway.core.record import RequestRecord
from gateway.state import get_state

logger = logging.getLogger(__name__)

def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_admin_key(token: str | None, admin_key: str | None) -> bool:
    return token is not None and admin_key is not None and hmac.compare_digest(token.encode(), admin_key.encode())


class KeyEnforcer:
    def __init__(self, store: KeyStore, admin_key: str) -> None:
        self.store = store
        self._admin_key = admin_key
        self._settling: set[asyncio.Task[None]] = set()

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
                "(Authorization: Bearer YOUR_KEY).", code="missing_api_key")
        if is_admin_key(token, self._admin_key):
            return Principal(None)
        key = await self.store.find(token) if looks_like_virtual_key(token) else None
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        check_usable(key)
        return Principal(key)

    def settle_soon(self, settlement: Settlement, on_settled: Callable[[], None] | None = None) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._settle(settlement, on_settled))
        self._settling.add(task)  # a strong reference until it is done
        task.add_done_callback(self._settling.discard)
        return task

    async def _settle(self, settlement: Settlement, on_settled: Callable[[], None] | None) -> None:
        try:
            await self.store.settle(settlement.key_id, settlement.reservation_id, settlement.cost_nano,
                                    settlement.tokens)
        except Exception as exc:  # journaled: the accounting sweeper retries it until the store takes it
            logger.warning("could not settle reservation %s of key %s now (%s); retried from the journal",
                           settlement.reservation_id, settlement.key_id, type(exc).__name__)
            return
        if on_settled is not None:
            on_settled()

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


def check_usable(key: VirtualKey) -> None:
    if key.revoked:
        raise AuthenticationError(f"The API key {key.id} has been revoked.", code="key_revoked")
    if key.expired():
        raise AuthenticationError(f"The API key {key.id} has expired.", code="key_expired")


@dataclass(slots=True)
class Ticket:
    """One admitted request's reservation; settled exactly once."""

    enforcer: KeyEnforcer
    key_id: str
    reservation_id: str
    limits: limits.LimitState
    meter: BudgetMeter | None = None  # asked before every upstream call (keys with a budget)
    settled: bool = False

    def headers(self) -> dict[str, str]:
        return limits.ratelimit_headers(self.limits)

    def settlement(self, record: RequestRecord) -> Settlement:
        tokens = max(0, record.prompt_tokens) + max(0, record.completion_tokens)
        return Settlement(self.key_id, self.reservation_id, usd_to_nano(record.cost_usd), tokens)

    async def settle(self, settlement: Settlement, on_settled: Callable[[], None] | None = None) -> None:
        """Apply ``settlement`` now; ``on_settled`` runs once the store took it (not if it failed)."""
        if self.settled:
            return
        self.settled = True
        task = self.enforcer.settle_soon(settlement, on_settled)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


async def admit_request(request: Request, model: str, prompt_tokens: int, max_tokens: int | None) -> Ticket | None:
    """Allow-list, limits and reservation for a virtual key; None when auth is off or for the admin."""
    state = get_state(request)
    enforcer = state.key_enforcer
    principal = principal_of(request)
    if enforcer is None or principal is None or principal.key is None:
        return None
    key = principal.key
    if not key.allows_model(model):
        raise PermissionDeniedError(
            f"The API key {key.id} may not use model '{model}'. Allowed: {', '.join(key.models)}.",
            param="model", code="model_not_allowed")
    cost_nano, tokens = worst_case(state.runtime.policy, model, prompt_tokens, max_tokens)
    reservation_id = new_id("rsv")
    admission = await enforcer.store.admit(key.id, reservation_id, cost_nano, tokens)
    if not admission.ok:
        raise _refusal(key, admission, cost_nano, tokens)
    meter = None
    if key.budget_nano is not None:
        meter = BudgetMeter(enforcer.store, key, reservation_id, cost_nano, state.runtime.policy)
    return Ticket(enforcer, key.id, reservation_id, admission.limits, meter)


def _refusal(key: VirtualKey, admission: limits.Admission, cost_nano: int, tokens: int) -> Exception:
    outcome, retry = admission.outcome, admission.retry_after_s
    if outcome in (limits.UNKNOWN, limits.REVOKED, limits.EXPIRED):
        gone = {limits.UNKNOWN: "no longer exists", limits.REVOKED: "has been revoked", limits.EXPIRED: "has expired"}
        return AuthenticationError(f"The API key {key.id} {gone[outcome]}.", code=f"key_{outcome}")
    if outcome == limits.RPM:
        error = RateLimitError(
            f"Rate limit reached for key {key.id}: {key.rpm} requests per minute. Retry after {retry or 0:.1f}s.",
            retry_after_s=retry)
        error.headers |= {"x-ratelimit-limit-requests": str(key.rpm), "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": limits.format_reset(retry or 0.0)}
        return error
    if outcome == limits.TPM:
        error = RateLimitError(
            f"Rate limit reached for key {key.id}: {key.tpm} tokens per minute; this request may use up to "
            f"{tokens} (prompt estimate + max_tokens). Retry after {retry or 0:.1f}s.", retry_after_s=retry)
        error.headers |= {"x-ratelimit-limit-tokens": str(key.tpm), "x-ratelimit-remaining-tokens": "0",
                          "x-ratelimit-reset-tokens": limits.format_reset(retry or 0.0)}
        return error
    if outcome == limits.TPM_TOO_LARGE:
        return RateLimitError(
            f"Request too large for key {key.id}: it may use up to {tokens} tokens (prompt estimate + max_tokens) "
            f"but the key allows {key.tpm} tokens per minute. Lower max_tokens.", code="request_too_large")
    budget = nano_to_usd(key.budget_nano or 0)
    if outcome == limits.BUDGET:
        return RateLimitError(
            f"Budget exhausted for key {key.id}: ${budget:.6f} budget; this request could cost up to "
            f"${nano_to_usd(cost_nano):.6f}. Raise the key's budget or lower max_tokens.", code="insufficient_quota")
    return RateLimitError(
        f"Budget of key {key.id} (${budget:.6f}) is held by requests in flight; this one could cost up to "
        f"${nano_to_usd(cost_nano):.6f}. Retry once they finish.", retry_after_s=retry, code="budget_reserved")
