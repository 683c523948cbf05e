"""Admin-only HTTP API for virtual keys: ``/v1/gateway/keys`` (create, list, revoke).

:func:`require_admin` guards these and the accounting endpoints: with an admin key
configured only that key passes — a virtual key gets 403, whatever its limits. With no
admin key (auth off, loopback by default) everything is open, as the rest of the gateway.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth.enforcement import bearer_token, is_admin_key
from gateway.auth.keys import KeySpec, parse_expiry
from gateway.auth.principal import principal_of
from gateway.auth.store import KeyStore
from gateway.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamUnavailableError,
)
from gateway.core.protocol import ERROR_RESPONSES
from gateway.state import get_state


async def require_admin(request: Request) -> None:
    state = getattr(request.app.state, "gateway", None)  # a router mounted alone has no gateway state
    admin_key = state.settings.admin_key if state is not None else None
    if admin_key is None:
        return
    token = bearer_token(request.headers.get("authorization"))
    if is_admin_key(token, admin_key):
        return
    principal = principal_of(request)
    if principal is not None and principal.key is not None:
        raise PermissionDeniedError("This endpoint needs the gateway's admin key; virtual keys cannot use it.",
                                    code="admin_only")
    raise AuthenticationError("This endpoint needs the gateway's admin key.")


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    # Bounded so spend in nano-dollars stays within a signed 64-bit counter (Redis, SQLite).
    budget_usd: float | None = Field(None, ge=0, le=1e9)
    rpm: int | None = Field(None, ge=1, le=10**9)
    tpm: int | None = Field(None, ge=1, le=10**12)
    models: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    expires: str | None = Field(None, description="2026-12-31, an ISO time, or a span: 12h, 30d, 2w")


def key_store(request: Request) -> KeyStore:
    store = get_state(request).key_store
    if store is None:  # only between the lifespan's start and stop
        raise UpstreamUnavailableError("the key store is not open")
    return store


def build_keys_router() -> APIRouter:
    router = APIRouter(tags=["keys"], dependencies=[Depends(require_admin)], responses=ERROR_RESPONSES)

    @router.post("/v1/gateway/keys")
    async def create_key(body: CreateKey, request: Request) -> dict[str, Any]:
        try:
            expires_at = parse_expiry(body.expires)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="expires") from None
        spec = KeySpec(name=body.name, budget_usd=body.budget_usd, rpm=body.rpm, tpm=body.tpm,
                       models=tuple(body.models), tags=tuple(body.tags), expires_at=expires_at)
        key, secret = await key_store(request).create(spec)
        return key.public_view() | {"key": secret}

    @router.get("/v1/gateway/keys")
    async def list_keys(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [key.public_view() for key in await key_store(request).list_keys()]}

    @router.get("/v1/gateway/keys/{key_id}")
    async def get_key(key_id: str, request: Request) -> dict[str, Any]:
        key = await key_store(request).get(key_id)
        if key is None:
            raise NotFoundError(f"no key {key_id!r}", param="key_id")
        return key.public_view()

    @router.delete("/v1/gateway/keys/{key_id}")
    async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
        if not await key_store(request).revoke(key_id):
            raise NotFoundError(f"no key {key_id!r}", param="key_id")
        return {"id": key_id, "object": "gateway.key", "revoked": True}

    return router
