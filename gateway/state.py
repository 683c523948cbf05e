"""Everything one gateway process holds, created by the app factory (no module globals)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fastapi import Request

from gateway.accounting.journal import Settlement
from gateway.core.record import RequestRecord
from gateway.runtime import PolicyRuntime
from gateway.settings import GatewaySettings
from policies.loader import load_policy

if TYPE_CHECKING:  # annotations only: the auth modules import this one
    from gateway.auth.enforcement import KeyEnforcer
    from gateway.auth.store import KeyStore
    from gateway.serving.response_store import ResponseStore
    from gateway.serving.selfcal_service import SelfCalService

logger = logging.getLogger(__name__)


class AccountingSink(Protocol):
    async def start(self) -> None: ...

    async def submit(self, record: RequestRecord, settle: Settlement | None = None) -> None:
        """Take a finished record (and its key settlement); with a journal, durable on return."""
        ...

    def settled(self, request_id: str) -> None:
        """The request path applied the request's settlement itself (nothing left to retry)."""
        ...

    async def close(self) -> None: ...


class MetricsSink(Protocol):
    def observe(self, record: RequestRecord) -> None: ...
    def render(self) -> tuple[bytes, str]: ...


@dataclass
class GatewayState:
    settings: GatewaySettings
    runtime: PolicyRuntime
    accounting: AccountingSink
    metrics: MetricsSink
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    in_flight: int = 0
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set by the lifespan (gateway.auth.lifecycle): the store always (the admin API manages
    # keys), the enforcer only when an admin key turns authentication on.
    key_store: KeyStore | None = None
    key_enforcer: KeyEnforcer | None = None
    # /v1/responses' store for previous_response_id, opened on first use (gateway.serving.responses).
    response_store: ResponseStore | None = None
    # Shadow jobs and the shared self-calibration store (gateway.serving.selfcal_service); None: off.
    selfcal: SelfCalService | None = None

    async def reload_policy(self) -> bool:
        """Swap in the policy file's current contents; keep the running one if it is invalid."""
        async with self.reload_lock:
            try:
                policy = load_policy(self.settings.policy_path)
                runtime = await PolicyRuntime.start(policy, reuse=self.runtime, threads=self.settings.threads,
                                                    wiring=self.selfcal)
            except Exception as exc:  # an invalid new policy must never take the gateway down
                logger.error("policy reload rejected, the running policy keeps serving: %s", exc)
                return False
            old, self.runtime = self.runtime, runtime
            await old.close(keep=runtime)
            logger.info("policy reloaded from %s", self.settings.policy_path or "the default policy")
            return True


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
