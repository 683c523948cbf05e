"""Process settings for the gateway's protections (docs/reliability.md lists them all).

| variable | default | what |
|---|---|---|
| ``SLM_GATEWAY_REDIS_MAX_CONNECTIONS`` | 64 | connections per Redis client (keys, records), per process; callers wait |
| ``SLM_GATEWAY_REDIS_POOL_TIMEOUT_S`` | 5 | longest wait for a connection; then 429 ``gateway_overloaded`` |
| ``SLM_GATEWAY_MAX_HEADER_BYTES`` | 65536 | request line + headers of one request; beyond it: 431, connection closed |
| ``SLM_GATEWAY_MAX_REQUEST_LINE_BYTES`` | 8192 | the request line's target (path + query); beyond it: 414 |
| ``SLM_GATEWAY_HEADER_TIMEOUT_S`` | 10 | a request's headers must arrive within this; else 408, closed |
| ``SLM_GATEWAY_JOURNAL`` | on | ``off``: no local journal (a crash loses records and settlements not yet stored) |
| ``SLM_GATEWAY_OPEN_METRICS`` | 0 | 1: ``/metrics`` needs no admin key even with auth on |
| ``SLM_GATEWAY_OPEN_DOCS`` | 0 | 1: ``/docs``, ``/redoc``, ``/openapi.json`` need no admin key even with auth on |

Read once at start-up (``from_env``) like :class:`gateway.settings.GatewaySettings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.redis_pool import RedisPoolSettings

N = TypeVar("N", int, float)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP/1.1 request may send before the app sees it (gateway.http_protocol)."""

    max_header_bytes: int = 64 * 1024
    max_request_line_bytes: int = 8 * 1024
    header_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ReliabilitySettings:
    redis_pool: RedisPoolSettings = field(default_factory=RedisPoolSettings)
    http: HttpLimits = field(default_factory=HttpLimits)
    journal: bool = True
    open_metrics: bool = False
    open_docs: bool = False

    def admin_only_paths(self) -> frozenset[str]:
        """Paths outside /v1 that need the admin key when auth is on (metrics, the API docs)."""
        paths = set() if self.open_metrics else {"/metrics"}
        if not self.open_docs:
            paths |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
        return frozenset(paths)

    @classmethod
    def from_env(cls) -> ReliabilitySettings:
        return cls(
            redis_pool=RedisPoolSettings(
                max_connections=_number("SLM_GATEWAY_REDIS_MAX_CONNECTIONS", 64, int),
                pool_timeout_s=_number("SLM_GATEWAY_REDIS_POOL_TIMEOUT_S", 5.0, float),
            ),
            http=HttpLimits(
                max_header_bytes=_number("SLM_GATEWAY_MAX_HEADER_BYTES", 64 * 1024, int),
                max_request_line_bytes=_number("SLM_GATEWAY_MAX_REQUEST_LINE_BYTES", 8 * 1024, int),
                header_timeout_s=_number("SLM_GATEWAY_HEADER_TIMEOUT_S", 10.0, float),
            ),
            journal=_flag("SLM_GATEWAY_JOURNAL", True),
            open_metrics=_flag("SLM_GATEWAY_OPEN_METRICS", False),
            open_docs=_flag("SLM_GATEWAY_OPEN_DOCS", False),
        )


def _number(name: str, default: N, kind: type[N]) -> N:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {raw!r}")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be on/off (1/0), got {raw!r}")
