"""Read side over HTTP: usage aggregates and single records.

The app mounts the router; GatewayError subclasses raised here are turned into OpenAI's
error envelope by the app's one exception handler.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from gateway.accounting.facts import DIMENSIONS
from gateway.accounting.service import AccountingService
from gateway.accounting.store import StoreUnavailableError
from gateway.auth.api import require_admin
from gateway.core.errors import InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.core.protocol import ERROR_RESPONSES


def build_accounting_router(service: AccountingService) -> APIRouter:
    # Admin-only (gateway.auth.api.require_admin).
    router = APIRouter(tags=["accounting"], dependencies=[Depends(require_admin)], responses=ERROR_RESPONSES)

    @router.get("/v1/gateway/usage")
    async def usage(
        since: str | None = Query(None, description="ISO time, epoch seconds, or a span like 30m, 1h, 7d"),
        until: str | None = Query(None, description="same forms as since; default now"),
        group_by: str = Query("route", description="|".join(DIMENSIONS)),
    ) -> dict[str, Any]:
        if group_by not in DIMENSIONS:
            raise InvalidRequestError(f"group_by must be one of {', '.join(DIMENSIONS)}", param="group_by")
        try:
            return await service.usage(since, until, group_by)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from None

    @router.get("/v1/gateway/requests/{request_id}")
    async def request_record(request_id: str) -> dict[str, Any]:
        try:
            record = await service.get_record(request_id)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from None
        if record is None:
            raise NotFoundError(f"no accounting record for request {request_id!r}", param="request_id")
        return record

    return router


def _store_down(exc: StoreUnavailableError) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(
        f"the accounting store is unavailable ({exc}); records are spooled and will be replayed",
        code="accounting_store_unavailable",
    )
