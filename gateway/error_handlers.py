"""Map every exception to OpenAI's error envelope (the vLLM ``create_error_response`` idea)."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.core.errors import GatewayError, InvalidRequestError, NotFoundError, error_body

logger = logging.getLogger(__name__)


def create_error_response(exc: BaseException) -> Response:
    if not isinstance(exc, GatewayError):
        logger.error("unhandled error", exc_info=exc)
        exc = GatewayError("The gateway hit an internal error; it has been logged.")
    return Response(orjson.dumps(error_body(exc)), status_code=exc.status_code, media_type="application/json",
                    headers=exc.headers)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence from pydantic's errors, without internals."""
    parts: list[str] = []
    param: str | None = None
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        if error.get("type") == "json_invalid":
            return "We could not parse the JSON body of your request: it is not valid JSON.", None
        where = ".".join(loc)
        param = param or (loc[0] if loc else None)
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "Invalid request: " + "; ".join(parts[:5]), param


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        return create_error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = validation_message(exc)
        return create_error_response(InvalidRequestError(message, param=param))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return create_error_response(NotFoundError("Unknown endpoint.", code="not_found"))
        if exc.status_code == 405:
            not_allowed = InvalidRequestError("Method not allowed for this endpoint.", code="method_not_allowed")
            not_allowed.status_code = 405
            return create_error_response(not_allowed)
        other = GatewayError(str(exc.detail))
        other.status_code = exc.status_code
        return create_error_response(other)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        return create_error_response(exc)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
