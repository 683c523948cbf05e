"""uvicorn's httptools protocol with limits on a request's head, enforced before it is parsed.

uvicorn's httptools parser has no header size limit: one 64 MiB header took 12.5 s to parse on
the event loop, and every other client waited that long. :class:`LimitedHttpToolsProtocol`
counts the bytes of each request's head (request line and headers) as they arrive, before
handing them to the parser, and answers without involving the app:

* **431** when the head exceeds ``max_header_bytes`` (default 64 KiB);
* **414** when the request line exceeds ``max_request_line_bytes`` (default 8 KiB);
* **408** when the head is not complete ``header_timeout_s`` after its first byte — or after
  the connection opened (a slowloris client trickling headers holds a connection, not the loop).

Each closes the connection. Past the head (the body, the response, keep-alive) the protocol is
uvicorn's own. The limits come from :class:`gateway.reliability.settings.HttpLimits`, attached
to the uvicorn ``Config`` by :func:`limited_config` (so worker processes get them too). The
counting is a ``find`` over each received chunk while a head is open, nothing afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.reliability.settings import HttpLimits

logger = logging.getLogger(__name__)

LIMITS_ATTRIBUTE = "slm_gateway_http_limits"
_END_OF_HEAD = b"\r\n\r\n"
_REFUSALS = {
    408: ("header_timeout", "The request's headers did not arrive in time."),
    414: ("request_line_too_long", "The request line is too long."),
    431: ("request_headers_too_large", "The request's headers are too large."),
}


def limited_config(app: Any, limits: HttpLimits, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn Config serving ``app`` with :class:`LimitedHttpToolsProtocol` and ``limits``."""
    config = uvicorn.Config(app, http=LimitedHttpToolsProtocol, **kwargs)
    setattr(config, LIMITS_ATTRIBUTE, limits)  # plain attribute: pickled into worker processes
    return config


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits = getattr(config, LIMITS_ATTRIBUTE, None)
        self.limits: HttpLimits = limits if isinstance(limits, HttpLimits) else HttpLimits()
        self._in_head = True  # receiving a request line and headers (not a body, not idle)
        self._head_bytes = 0
        self._line_done = False
        self._tail = b""  # the last bytes seen, for a terminator split across two reads
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head and not self._count_head(data):
            return
        super().data_received(data)

    def _count_head(self, data: bytes) -> bool:
        """Count ``data`` against the open head's limits; False when the request was refused."""
        if self._head_timer is None:  # the first byte of a new request on a kept-alive connection
            self._arm_head_timer()
        window = self._tail + data
        end = window.find(_END_OF_HEAD)
        counted = len(data) if end < 0 else max(0, end + len(_END_OF_HEAD) - len(self._tail))
        if not self._line_done:
            line_end = window.find(b"\r\n")
            line_length = self._head_bytes + (len(data) if line_end < 0 else line_end - len(self._tail))
            if line_length > self.limits.max_request_line_bytes:
                self._refuse(414)
                return False
            self._line_done = line_end >= 0
        self._head_bytes += counted
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431)
            return False
        if end >= 0:
            self._in_head = False  # the rest of this read is body (or a pipelined request)
        self._tail = window[-(len(_END_OF_HEAD) - 1):]
        return True

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next request's head starts with the next byte; its timer starts with that byte
        # (uvicorn's keep-alive timeout covers the idle time in between).
        self._in_head, self._head_bytes, self._line_done, self._tail = True, 0, False, b""

    # --- refusing --------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a running response: wait for it
            return
        self._refuse(408)

    def _refuse(self, status: int) -> None:
        self._cancel_head_timer()
        code, message = _REFUSALS[status]
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        logger.warning("refused a request from %s before parsing it: HTTP %d (%s)", client, status, code)
        body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}})
        head = [STATUS_LINE[status], b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n", b"connection: close\r\n", b"\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
