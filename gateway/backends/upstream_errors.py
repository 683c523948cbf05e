"""Translate an upstream's HTTP status or a transport failure into a gateway error.

The upstream's own message is passed on only for 400 (it concerns the client's request);
other statuses get a fixed message, so nothing an upstream says about credentials or its
internals reaches the client.
"""

from __future__ import annotations

import httpx

from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)


def _upstream_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:500]
    except ValueError:
        pass
    return ""


def translate_status(backend: str, response: httpx.Response) -> GatewayError:
    status = response.status_code
    if status == 400 or status == 422:
        detail = _upstream_message(response) or "the upstream rejected the request"
        return InvalidRequestError(f"upstream {backend!r}: {detail}", code="upstream_bad_request")
    if status == 429:
        retry = response.headers.get("retry-after")
        try:
            seconds = float(retry) if retry else None
        except ValueError:
            seconds = None
        return RateLimitError(f"upstream {backend!r} is rate limiting", retry_after_s=seconds,
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


def translate_transport(backend: str, exc: httpx.HTTPError) -> GatewayError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamTimeoutError(f"upstream {backend!r} timed out", backend=backend)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamUnavailableError(f"upstream {backend!r} is unreachable", backend=backend,
                                        code="upstream_unreachable")
    return UpstreamError(f"upstream {backend!r} connection failed ({type(exc).__name__})", backend=backend)
