"""One client request's accounting scope: opened when routed, finished exactly once.

Whatever happens — success, an error before or after the stream started, the client
going away — :meth:`RequestScope.finish` finalises the record and hands it to the
accounting sink, so no request goes unrecorded.
"""

from __future__ import annotations

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
        self.ctx = RequestContext(self.record, strategy.resources)
        self._finished = False

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
        policy = self.state.runtime.policy
        reference = policy.gateway.reference_llm
        price = policy.backends[reference].price if reference and reference in policy.backends else None
        finalize_record(self.record, price, {name: b.price for name, b in policy.backends.items()})

    def cost_headers(self) -> dict[str, str]:
        return {
            "x-slm-gateway-cost-usd": f"{self.record.cost_usd:.8f}",
            "x-slm-gateway-latency-ms": f"{self.record.latency_ms:.1f}",
        }

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, GatewayError):
            self.record.status, self.record.http_status = error_kind(exc), exc.status_code
        else:
            self.record.status, self.record.http_status = error_kind(exc), 500

    def client_gone(self) -> None:
        self.record.status, self.record.http_status = "client_disconnected", 499

    async def finish(self, usage: tuple[int, int] | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.settle(usage)
        if self.ticket is not None:  # real cost replaces the reservation: errors and cut streams included
            await self.ticket.settle(self.record)
        try:
            self.state.metrics.observe(self.record)
            await self.state.accounting.submit(self.record)
        except Exception:  # accounting must never break a response; the sink spools itself
            logger.exception("accounting failed for %s", self.record.request_id)
