"""Every ASGI middleware of the app: body size limit (413 in OpenAI's envelope), the in-flight
counter that draining waits on, and bearer-key authentication of ``/v1/*``.
:func:`install_middleware` adds them, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.principal import attach_principal
from gateway.core.errors import GatewayError, PermissionDeniedError, RequestTooLargeError, error_body
from gateway.error_handlers import create_error_response
from gateway.state import GatewayState

PROTECTED_PREFIX = "/v1/"


class BodySizeLimit:
    """Rejects bodies over ``limit()`` bytes, by Content-Length and while streaming them in."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _reject(send, limit)
                return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await _reject(send, limit)


class _TooLarge(Exception):
    pass


async def _reject(send: Send, limit: int) -> None:
    body = orjson.dumps(error_body(RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")))
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class InFlightCounter:
    """Counts requests whose response has not finished (streams included), for draining."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState | None = getattr(self.fastapi_app.state, "gateway", None)
        if scope["type"] != "http" or state is None:
            await self.app(scope, receive, send)
            return
        state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1


class ApiKeyAuth:
    """Bearer-key authentication for every ``/v1/*`` path (when an admin key is configured).

    An ASGI middleware rather than per-route dependencies so that no ``/v1`` route — including
    ones added later — can be reached unauthenticated. ``/health`` and ``/ready`` stay open
    (probes carry no keys); ``/metrics`` and the API docs need the admin key unless
    ``SLM_GATEWAY_OPEN_METRICS`` / ``SLM_GATEWAY_OPEN_DOCS`` open them (route and key ids in
    metrics, the API surface in the docs, are for operators). On success the request carries one
    :class:`~gateway.auth.principal.Principal`.
    """

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState | None = getattr(self.fastapi_app.state, "gateway", None)
        enforcer = state.key_enforcer if state is not None else None
        path = str(scope.get("path", ""))
        # /metrics and the API docs: the admin key only, unless the settings open them.
        admin_only = state is not None and path in state.settings.reliability.admin_only_paths()
        if scope["type"] != "http" or enforcer is None or not (path.startswith(PROTECTED_PREFIX) or admin_only):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            principal = await enforcer.authenticate(authorization)
            if admin_only and not principal.is_admin:
                raise PermissionDeniedError("This endpoint needs the gateway's admin key; virtual keys cannot use it.",
                                            code="admin_only")
        except GatewayError as exc:
            response = create_error_response(exc)
            if exc.status_code == 401:
                response.headers["www-authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        attach_principal(scope, principal)
        await self.app(scope, receive, send)


def install_middleware(app: FastAPI, max_body_bytes: int) -> None:
    """Every middleware of the app, in one place. Starlette runs the last added first, so a
    request meets: the body-size limit, then the in-flight counter, then authentication."""
    app.add_middleware(ApiKeyAuth, fastapi_app=app)
    app.add_middleware(InFlightCounter, fastapi_app=app)
    app.add_middleware(BodySizeLimit, limit=lambda: _body_limit(app, max_body_bytes))


def _body_limit(app: FastAPI, default: int) -> int:
    state: GatewayState | None = getattr(app.state, "gateway", None)
    return state.runtime.policy.gateway.max_body_bytes if state else default
