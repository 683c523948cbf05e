"""Start and stop the key store and enforcer with the app (called from the lifespan)."""

from __future__ import annotations

import logging

from gateway.auth.enforcement import ENFORCER, KEY_STORE, KeyEnforcer
from gateway.auth.store import KeyStore, build_key_store
from gateway.state import GatewayState

logger = logging.getLogger(__name__)


def start_keys(state: GatewayState) -> None:
    """Open the key store (lazily connected) and, when an admin key is set, turn auth on."""
    settings = state.settings
    store = build_key_store(settings.redis_url, settings.data_dir)
    state.extras[KEY_STORE] = store
    if settings.admin_key:
        state.extras[ENFORCER] = KeyEnforcer(store, settings.admin_key)
        logger.info("API keys required on /v1/* (admin key configured)")
    else:
        logger.warning("no SLM_GATEWAY_ADMIN_KEY: authentication is OFF; /v1/* is open to anyone who can connect")


async def stop_keys(state: GatewayState) -> None:
    enforcer = state.extras.pop(ENFORCER, None)
    if isinstance(enforcer, KeyEnforcer):
        await enforcer.close()  # settle what is still in flight
    store: KeyStore | None = state.extras.pop(KEY_STORE, None)
    if store is not None:
        await store.close()
