"""Read side over HTTP: usage aggregates and single records.

The app mounts the router; GatewayError subclasses raised here are turned into OpenAI's
error envelope by the app's one exception handler.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.accounting.facts import DIMENSIONS
from gateway.accounting.selfcal_report import summaries_body, summarize, window_phrase
from gateway.accounting.selfcal_store import StoreError
from gateway.accounting.service import AccountingService
from gateway.accounting.store import StoreUnavailableError
from gateway.accounting.window import minute_window
from gateway.auth.api import require_admin
from gateway.core.errors import InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.core.protocol import ERROR_RESPONSES
from gateway.state import get_state


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

    @router.get("/v1/gateway/usage/cascades")
    async def cascades(
        request: Request,
        since: str | None = Query("7d", description="ISO time, epoch seconds, or a span like 30m, 1h, 7d"),
        until: str | None = Query(None, description="same forms as since; default now"),
    ) -> dict[str, Any]:
        """Per self-calibrating cascade: agreement of kept answers with its interval, the threshold
        in force, escalation rate, shadow cost, savings, and the one-sentence summary."""
        first, last = minute_window(since, until)
        selfcal = get_state(request).selfcal
        if selfcal is None:
            return {**summaries_body([], first, last), "enabled": False}
        try:
            totals = await service.totals(since, until, "model")
            summaries = await summarize(selfcal.store, totals, first, last, window_phrase(since))
        except StoreUnavailableError as exc:
            raise _store_down(exc) from None
        except StoreError as exc:
            raise UpstreamUnavailableError(f"the self-calibration store is unavailable ({exc})",
                                           code="selfcal_store_unavailable") from None
        return {**summaries_body(summaries, first, last), "enabled": True}

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
