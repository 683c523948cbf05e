"""One client request's accounting scope: opened when routed, finished exactly once.

Whatever happens — success, an error before or after the stream started, the client
going away — :meth:`RequestScope.finish` finalises the record and hands it to the
accounting sink, so no request goes unrecorded. ``finish`` returns once the record and the
key's settlement are journaled (durable), and the answer's last bytes are sent only after it:
an answered request always has its record, even if the process is killed the next instant.
Error responses produced from here on carry the request id (:meth:`RequestScope.fail`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.accounting.finalize import finalize_record
from gateway.core.errors import GatewayError, error_kind
from gateway.core.protocol import new_id
from gateway.core.record import RequestRecord
from gateway.core.strategy import RequestContext, Strategy
from gateway.state import GatewayState

if TYPE_CHECKING:
    from gateway.auth.enforcement import Ticket

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-slm-gateway-request-id"
ROUTE_HEADER = "x-slm-gateway-route"


class RequestScope:
    def __init__(
        self, state: GatewayState, strategy: Strategy[Any], endpoint: str, stream: bool, key_id: str | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        self.state = state
        self.ticket = ticket  # the key's budget reservation, settled in finish()
        self.started = time.perf_counter()
        self.record = RequestRecord(
            request_id=new_id("req"), public_model=strategy.public_name, endpoint=endpoint, stream=stream,
            key_id=key_id,
        )
        self.ctx = RequestContext(self.record, strategy.resources, ticket.meter if ticket is not None else None)
        self._finished = False
        self._handover: asyncio.Future[None] | None = None  # referenced until done (finish)

    @property
    def request_id(self) -> str:
        return self.record.request_id

    def mark_first_token(self) -> None:
        if self.record.ttft_ms is None:
            self.record.ttft_ms = (time.perf_counter() - self.started) * 1000

    def headers(self) -> dict[str, str]:
        headers = {REQUEST_ID_HEADER: self.record.request_id, ROUTE_HEADER: self.record.route}
        headers.update(self.ctx.response_headers)
        if self.ticket is not None:
            headers.update(self.ticket.headers())
        return headers

    def settle(self, usage: tuple[int, int] | None) -> None:
        """Compute totals, cost and savings now (for response headers); idempotent."""
        self.record.latency_ms = (time.perf_counter() - self.started) * 1000
        if usage is not None:
            self.record.prompt_tokens, self.record.completion_tokens = usage
        finalize_record(self.record, self.state.runtime.reference_price)

    def cost_headers(self) -> dict[str, str]:
        return {
            "x-slm-gateway-cost-usd": f"{self.record.cost_usd:.8f}",
            "x-slm-gateway-latency-ms": f"{self.record.latency_ms:.1f}",
        }

    def fail(self, exc: BaseException) -> BaseException:
        """Record the failure; return what the client gets: a GatewayError carrying this request's
        id and route headers (an unexpected exception is logged and becomes a plain 500)."""
        if not self._finished:
            status = exc.status_code if isinstance(exc, GatewayError) else 500
            self.record.status, self.record.http_status = error_kind(exc), status
        if not isinstance(exc, Exception):
            return exc  # cancellation: nobody to answer
        if not isinstance(exc, GatewayError):
            logger.error("unhandled error in request %s", self.record.request_id, exc_info=exc)
            exc = GatewayError("The gateway hit an internal error; it has been logged.")
        for name, value in self.headers().items():
            exc.headers.setdefault(name, value)
        return exc

    def client_gone(self) -> None:
        if not self._finished:  # after finish the record is journaled as it was answered
            self.record.status, self.record.http_status = "client_disconnected", 499

    async def finish(self, usage: tuple[int, int] | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.settle(usage)
        # Its own task, shielded: a client that goes away (Starlette cancels the response's task)
        # must not interrupt the hand-over half way; the caller still sees its cancellation.
        self._handover = asyncio.ensure_future(self._hand_over())
        await asyncio.shield(self._handover)

    async def _hand_over(self) -> None:
        # The real cost replaces the reservation: errors and cut streams included.
        settlement = self.ticket.settlement(self.record) if self.ticket is not None else None
        accounting = self.state.accounting
        try:
            self.state.metrics.observe(self.record)
            await accounting.submit(self.record, settlement)  # journaled (durable) when it returns
        except Exception:  # accounting must never break a response; the sink spools itself
            logger.exception("accounting failed for %s", self.record.request_id)
        if self.ticket is not None and settlement is not None:
            request_id = self.record.request_id
            await self.ticket.settle(settlement, on_settled=lambda: accounting.settled(request_id))
