"""Translate an upstream's HTTP status or a transport failure into a gateway error.

No text an upstream wrote reaches the client: every status gets our own fixed message. An
upstream's error message can quote the request it received — the ``Authorization`` header
with the gateway's API key (some proxies echo it), the rewritten body, the internal model
name — so it is never relayed. For a 400 / 422 (about the client's request) only the
upstream's ``code`` and ``param`` pass, and only when they look like identifiers
(``context_length_exceeded``, ``messages[0].content``). Transport failures arrive as aiohttp
exceptions (the ``openai`` backend's client); nothing above this module sees an aiohttp type.
"""

from __future__ import annotations

import asyncio
import re
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

# What an identifier-like upstream ``code`` / ``param`` may look like to be relayed: no spaces,
# no quotes, no ``-`` (API keys are ``sk-...``), short.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,63}")
_KNOWN_CODES = {
    "context_length_exceeded": "the prompt plus max_tokens exceed the upstream model's context length",
    "string_above_max_length": "a string in the request is longer than the upstream accepts",
    "invalid_value": "a parameter has a value the upstream does not accept",
    "unsupported_parameter": "a parameter is not supported by the upstream model",
    "unsupported_value": "a parameter value is not supported by the upstream model",
}


def _upstream_fields(body: bytes) -> tuple[str | None, str | None]:
    """The upstream error's ``code`` and ``param``, each only if it is a plain identifier."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, None

    def identifier(value: object) -> str | None:
        return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None

    return identifier(error.get("code")), identifier(error.get("param"))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def translate_status(backend: str, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
    """The gateway error for an upstream's HTTP error ``status`` (≥ 400)."""
    if status == 400 or status == 422:
        code, param = _upstream_fields(body)
        detail = f"upstream {backend!r} rejected the request (HTTP {status}"
        detail += f", code {code})" if code else ")"
        if code in _KNOWN_CODES:
            detail += f": {_KNOWN_CODES[code]}"
        return InvalidRequestError(detail, param=param, code="upstream_bad_request")
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
