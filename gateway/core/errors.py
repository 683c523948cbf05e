"""Gateway exceptions and their one mapping to OpenAI's error envelope.

Hierarchy::

    GatewayError                      500 internal_error (never raised on purpose)
    ├── InvalidRequestError           400 invalid_request_error
    │   └── UnsupportedParameterError 400 (a parameter we recognise but do not support)
    ├── AuthenticationError           401
    ├── PermissionDeniedError         403
    ├── NotFoundError                 404 (unknown model, record, route)
    ├── RequestTooLargeError          413
    ├── RateLimitError                429 (carries Retry-After)
    └── UpstreamError                 502 upstream answered with an error / broke
        ├── UpstreamUnavailableError  503 unconfigured, down, circuit open, not ready
        └── UpstreamTimeoutError      504

Lower-layer errors (aiohttp, httpx, redis, torch) are translated into these at the boundary
where they happen; :func:`error_body` is the only place that builds the envelope.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status_code = 500
    error_type = "internal_error"
    default_code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = {}


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code: str | None = None


class UnsupportedParameterError(InvalidRequestError):
    default_code = "unsupported_parameter"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class RequestTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        if retry_after_s is not None:
            self.headers["retry-after"] = str(max(1, round(retry_after_s)))


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"

    def __init__(
        self, message: str, *, backend: str | None = None, upstream_status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.backend = backend
        self.upstream_status = upstream_status


class UpstreamUnavailableError(UpstreamError):
    status_code = 503
    default_code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"


def error_body(exc: GatewayError) -> dict[str, Any]:
    """OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for records and metrics (never the message)."""
    if isinstance(exc, GatewayError):
        return exc.code or exc.error_type
    return "internal_error"
