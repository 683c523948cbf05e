"""Who is calling: the one typed object the /v1 middleware leaves on a request.

The middleware (``gateway.middleware.ApiKeyAuth``) authenticates the bearer key and stores a
:class:`Principal` in the request's ASGI state; everything downstream — the model allow-list
of ``/v1/models``, routing rules on key tags, the record's ``key_id``, admission — reads it
through :func:`principal_of`, never through loose strings. No principal means auth is off.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Scope

from gateway.auth.keys import VirtualKey

ADMIN_KEY_ID = "admin"
_STATE_KEY = "principal"  # the request.state attribute the middleware sets


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits as stored when it authenticated (None: unlimited)."""

    rpm: int | None = None
    tpm: int | None = None
    budget_nano: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """The admin (``key is None``) or a virtual key."""

    key: VirtualKey | None

    @property
    def is_admin(self) -> bool:
        return self.key is None

    @property
    def key_id(self) -> str:
        return ADMIN_KEY_ID if self.key is None else self.key.id

    @property
    def tags(self) -> tuple[str, ...]:
        return () if self.key is None else tuple(self.key.tags)

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The public models this caller may use; empty means every model."""
        return () if self.key is None else tuple(self.key.models)

    @property
    def limits(self) -> KeyLimits:
        if self.key is None:
            return KeyLimits()
        return KeyLimits(self.key.rpm, self.key.tpm, self.key.budget_nano)

    def allows_model(self, model: str) -> bool:
        return self.key is None or self.key.allows_model(model)


def attach_principal(scope: Scope, principal: Principal) -> None:
    """Store ``principal`` in an ASGI request scope (what ``request.state`` reads)."""
    scope.setdefault("state", {})[_STATE_KEY] = principal


def principal_of(request: Request) -> Principal | None:
    """The request's caller; None when authentication is off."""
    principal = getattr(request.state, _STATE_KEY, None)
    return principal if isinstance(principal, Principal) else None
