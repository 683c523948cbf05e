"""What every answer shares, whatever its format (chat or legacy completions).

Non-streamed: :func:`collected` runs the collection unless the client leaves, and settles the
record if it fails or they do. Streamed: the first event is pulled before the response
starts, so an error that happens before any token gets a proper HTTP status. After that the
status is sent: the stream always ends with ``[DONE]``, an error becomes an OpenAI error
event first, and the request's record is settled exactly once whether the stream ends,
fails, or the client goes away.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from gateway.backends.sse import DONE, encode_event
from gateway.core.errors import GatewayError, error_body
from gateway.serving.disconnect import ClientDisconnected, run_unless_disconnected
from gateway.serving.scope import RequestScope

E = TypeVar("E")
T = TypeVar("T")


async def collected(request: Request, scope: RequestScope, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result; None when the client went away first (the record says so)."""
    try:
        return await run_unless_disconnected(request, work)
    except ClientDisconnected:
        scope.client_gone()
        await scope.finish()
        return None
    except BaseException as exc:
        to_client = scope.fail(exc)
        await scope.finish()
        if to_client is exc:
            raise
        raise to_client from exc


@dataclass
class StreamUsage:
    """Filled in by the chunk producer when the answer's usage is known."""

    tokens: tuple[int, int] | None = None


async def first_event(events: AsyncIterator[E], scope: RequestScope) -> E:
    try:
        event = await events.__anext__()
    except BaseException as exc:
        to_client = scope.fail(exc)
        await scope.finish()
        if to_client is exc:
            raise
        raise to_client from exc
    scope.mark_first_token()
    return event


async def terminated(
    chunks: AsyncGenerator[bytes, None], events: AsyncIterator[Any], scope: RequestScope, usage: StreamUsage
) -> AsyncIterator[bytes]:
    """``chunks`` as the client receives them, always closed by ``[DONE]``.

    ``[DONE]`` goes out only after :meth:`RequestScope.finish` has journaled the record and the
    settlement: once the client holds a complete answer, its record survives a crash.
    """
    try:
        try:
            async for data in chunks:
                yield data
        except GatewayError as exc:
            scope.fail(exc)
            yield encode_event(error_body(exc))
        except Exception as exc:
            scope.fail(exc)
            yield encode_event(error_body(GatewayError("internal error while streaming")))
        await _finish(chunks, events, scope, usage)
        yield DONE
    except BaseException:  # client disconnected: Starlette cancels us
        scope.client_gone()
        raise
    finally:
        await _finish(chunks, events, scope, usage)  # idempotent: settles a stream cut short


async def _finish(chunks: AsyncGenerator[bytes, None], events: AsyncIterator[Any], scope: RequestScope,
                  usage: StreamUsage) -> None:
    await chunks.aclose()
    await close_events(events)
    await scope.finish(usage.tokens)


async def close_events(events: AsyncIterator[Any]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
