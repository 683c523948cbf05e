"""``GET /dashboard`` (the page and its assets, shipped in this package) and the JSON it polls.

The page is static HTML + a small hand-written SVG renderer (``static/dashboard.js``): no
charting library, no build step, no CDN — it works on a machine without internet. Its figures
come from ``/v1/gateway/dashboard/overview`` and ``/v1/gateway/dashboard/requests``, which read
the accounting store that answers ``/v1/gateway/usage`` (admin-only like it); a request's full
record is ``/v1/gateway/requests/{id}``.

With auth on, ``/dashboard`` needs the admin key: a bearer header, or the session cookie the
login form sets (:mod:`gateway.dashboard.session`). The page's own API calls send the key as a
bearer token, like any other admin client.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.accounting.service import AccountingService
from gateway.accounting.store import StoreUnavailableError
from gateway.auth.api import require_admin
from gateway.auth.enforcement import bearer_token, is_admin_key
from gateway.core.errors import AuthenticationError, InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.core.protocol import ERROR_RESPONSES
from gateway.dashboard.data import WINDOWS, overview, request_row
from gateway.dashboard.session import COOKIE, MAX_AGE_S, session_token, valid_session
from gateway.state import get_state

_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "charts.js": "text/javascript"}
_NO_STORE = {"cache-control": "no-store"}


def _asset(name: str) -> bytes:
    return resources.files("gateway.dashboard").joinpath("static", name).read_bytes()


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=4096)


def build_dashboard_router(service: AccountingService) -> APIRouter:
    router = APIRouter()

    @router.get("/dashboard", include_in_schema=False)
    async def page(request: Request) -> Response:
        admin_key = get_state(request).settings.admin_key
        allowed = admin_key is None or valid_session(request.cookies.get(COOKIE), admin_key) or is_admin_key(
            bearer_token(request.headers.get("authorization")), admin_key)
        name = "index.html" if allowed else "login.html"
        return HTMLResponse(_asset(name), status_code=200 if allowed else 401, headers=_NO_STORE)

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        # The page's code (the same for everyone, shipped in the wheel); no figure is in it.
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise NotFoundError(f"no dashboard asset {name!r}")
        return Response(_asset(name), media_type=media_type, headers={"cache-control": "no-cache"})

    @router.post("/dashboard/login", include_in_schema=False)
    async def login(body: Login, request: Request) -> Response:
        admin_key = get_state(request).settings.admin_key
        if admin_key is None:
            return Response(status_code=204)
        if not is_admin_key(body.key, admin_key):
            raise AuthenticationError("That is not the gateway's admin key.")
        response = Response(status_code=204)
        response.set_cookie(COOKIE, session_token(admin_key), max_age=MAX_AGE_S, httponly=True, samesite="strict",
                            path="/dashboard", secure=request.url.scheme == "https")
        return response

    @router.post("/dashboard/logout", include_in_schema=False)
    async def logout() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    api = APIRouter(tags=["dashboard"], dependencies=[Depends(require_admin)], responses=ERROR_RESPONSES)

    @api.get("/v1/gateway/dashboard/overview")
    async def dashboard_overview(request: Request, window: str = Query("1h", description="|".join(WINDOWS))
                                 ) -> dict[str, Any]:
        chosen = WINDOWS.get(window)
        if chosen is None:
            raise InvalidRequestError(f"window must be one of {', '.join(WINDOWS)}", param="window")
        state = get_state(request)
        types = {name: strategy.config.type for name, strategy in state.runtime.strategies.items()}
        keys = [key.public_view() for key in await state.key_store.list_keys()] if state.key_store else []
        try:
            return await overview(service.store, chosen, strategy_types=types, keys=keys)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from None

    @api.get("/v1/gateway/dashboard/requests")
    async def latest_requests(limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        try:
            records = await service.store.recent_records(limit)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from None
        return {"object": "list", "data": [request_row(record) for record in records]}

    router.include_router(api)
    return router


def _store_down(exc: StoreUnavailableError) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(f"the accounting store is unavailable ({exc})",
                                    code="accounting_store_unavailable")
