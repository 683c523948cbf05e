"""Translate an upstream's HTTP status or a transport failure into a gateway error.

The upstream's own message is passed on only for 400 (it concerns the client's request);
other statuses get a fixed message, so nothing an upstream says about credentials or its
internals reaches the client. Transport failures arrive as aiohttp exceptions (the
``openai`` backend's client); nothing above this module sees an aiohttp type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
import orjson

from gateway.core.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)


def _upstream_message(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:500]
    return ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def translate_status(backend: str, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
    """The gateway error for an upstream's HTTP error ``status`` (≥ 400)."""
    if status == 400 or status == 422:
        detail = _upstream_message(body) or "the upstream rejected the request"
        return InvalidRequestError(f"upstream {backend!r}: {detail}", code="upstream_bad_request")
    if status == 429:
        return RateLimitError(f"upstream {backend!r} is rate limiting", retry_after_s=_retry_after(headers),
                              code="upstream_rate_limited")
    if status in (401, 403):
        return UpstreamError(f"upstream {backend!r} rejected the gateway's credentials", backend=backend,
                             upstream_status=status, code="upstream_auth_failed")
    if status in (502, 503):
        return UpstreamUnavailableError(f"upstream {backend!r} is unavailable (HTTP {status})",
                                        backend=backend, upstream_status=status)
    if status == 504:
        return UpstreamTimeoutError(f"upstream {backend!r} timed out (HTTP 504)", backend=backend,
                                    upstream_status=status)
    return UpstreamError(f"upstream {backend!r} failed with HTTP {status}", backend=backend,
                         upstream_status=status)


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What the ``openai`` backend catches around a call and hands to :func:`translate_transport`."""


def translate_transport(backend: str, exc: aiohttp.ClientError | asyncio.TimeoutError) -> GatewayError:
    # Connecting (including waiting for a pooled connection) failed: nothing reached the upstream.
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return UpstreamUnavailableError(f"upstream {backend!r} is unreachable", backend=backend,
                                        code="upstream_unreachable")
    if isinstance(exc, asyncio.TimeoutError):  # includes aiohttp's read timeouts
        return UpstreamTimeoutError(f"upstream {backend!r} timed out", backend=backend)
    return UpstreamError(f"upstream {backend!r} connection failed ({type(exc).__name__})", backend=backend)
