"""Server-sent events: encode our stream, decode an upstream's."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def encode_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _decode_lines(lines: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
    """JSON payloads of the ``data:`` lines, and whether ``[DONE]`` was among them."""
    payloads: list[dict[str, Any]] = []
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # comments (keep-alives) and other SSE fields
        data = line[5:].strip()
        if data == b"[DONE]":
            return payloads, True
        if data:
            payload = orjson.loads(data)
            if isinstance(payload, dict):
                payloads.append(payload)
    return payloads, False


async def event_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[dict[str, Any]]]:
    """For each network read, the payloads of the ``data:`` lines it completed; ends at ``[DONE]``.

    ``chunks`` arrive cut anywhere (an aiohttp response's ``content.iter_any()``). Working per
    read rather than per line lets the caller relay every event that arrived together as one:
    one ``split`` per read instead of a buffered ``readline`` per line, and one trip through
    the layers above instead of one per token. Raises ``orjson.JSONDecodeError`` on a data
    line that is not JSON.
    """
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).split(b"\n") if pending else chunk.split(b"\n")
        pending = lines.pop()
        payloads, done = _decode_lines(lines)
        if payloads:
            yield payloads
        if done:
            return
    if pending:
        payloads, _ = _decode_lines([pending])
        if payloads:
            yield payloads


async def decode_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The payloads of :func:`event_batches` one at a time."""
    async for payloads in event_batches(chunks):
        for payload in payloads:
            yield payload
