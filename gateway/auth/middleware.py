"""Bearer-key authentication for every ``/v1/*`` path (when an admin key is configured).

An ASGI middleware rather than per-route dependencies so that no ``/v1`` route — including
ones added later — can be reached unauthenticated. ``/health``, ``/ready`` and ``/metrics``
stay open (probes and scrapers carry no keys; /metrics holds aggregates, no secrets, no
prompts). On success it leaves on ``request.state``: ``principal``, ``key_id``,
``key_tags`` (read by routing rules) and ``key_models``.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.enforcement import enforcer_of
from gateway.core.errors import GatewayError
from gateway.error_handlers import create_error_response
from gateway.state import GatewayState

PROTECTED_PREFIX = "/v1/"


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState | None = getattr(self.fastapi_app.state, "gateway", None)
        enforcer = enforcer_of(state) if state is not None else None
        if scope["type"] != "http" or enforcer is None or not str(scope.get("path", "")).startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            principal = await enforcer.authenticate(authorization)
        except GatewayError as exc:
            response = create_error_response(exc)
            if exc.status_code == 401:
                response.headers["www-authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        request_state = scope.setdefault("state", {})
        request_state["principal"] = principal
        request_state["key_id"] = principal.key_id
        request_state["key_tags"] = principal.key.tags if principal.key else ()
        request_state["key_models"] = principal.key.models if principal.key else ()
        await self.app(scope, receive, send)
