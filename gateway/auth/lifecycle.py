"""Start and stop the key store and enforcer with the app (called from the lifespan)."""

from __future__ import annotations

import logging

from gateway.auth.enforcement import KeyEnforcer
from gateway.auth.store import build_key_store
from gateway.state import GatewayState

logger = logging.getLogger(__name__)


def start_keys(state: GatewayState) -> None:
    """Open the key store (lazily connected) and, when an admin key is set, turn auth on."""
    settings = state.settings
    store = build_key_store(settings.redis_url, settings.data_dir, redis_pool=settings.reliability.redis_pool)
    state.key_store = store
    # Settlements the request path could not apply (the store was down, the process died) are
    # retried from the accounting journal with this store, whether auth is on now or not.
    attach_settler = getattr(state.accounting, "attach_settler", None)
    if attach_settler is not None:
        attach_settler(lambda s: store.settle(s.key_id, s.reservation_id, s.cost_nano, s.tokens))
    if settings.admin_key:
        state.key_enforcer = KeyEnforcer(store, settings.admin_key)
        logger.info("API keys required on /v1/* (admin key configured)")
    else:
        logger.warning("no SLM_GATEWAY_ADMIN_KEY: authentication is OFF; /v1/* is open to anyone who can connect")


async def stop_keys(state: GatewayState) -> None:
    enforcer, state.key_enforcer = state.key_enforcer, None
    if enforcer is not None:
        await enforcer.close()  # settle what is still in flight
    store, state.key_store = state.key_store, None
    if store is not None:
        await store.close()
