"""Several answers to one request (``n > 1``) and the assembly of one choice's message.

``n`` choices are ``n`` independent runs of the model's strategy, concurrent: an in-process
engine batches them, a cascade decides for each on its own, and every call is one call of
the request's record (so usage and cost are the sums). :func:`merged` interleaves their
events as ``(index, event)``; :class:`ChoiceAssembly` folds one choice's events into an
OpenAI message (text, tool calls from their streamed fragments, refusal, relayed extras).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from gateway.core.backend import TokenChunk
from gateway.core.protocol import chat_logprob_entry
from gateway.core.structured.tool_calls import merge_tool_fragments

E = TypeVar("E")
_END = object()


async def merged(streams: Sequence[AsyncIterator[E]]) -> AsyncIterator[tuple[int, E]]:
    """Events of every stream, tagged with its index, as they come. A failure of any one ends
    all (the request fails as a whole); closing this closes them all."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=64)

    async def pump(index: int, stream: AsyncIterator[E]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        except BaseException as exc:
            await queue.put((index, exc))
            raise
        finally:
            await queue.put((index, _END))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for stream in streams:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(BaseException):
                    await close()


def merge_extra(target: dict[str, Any], extra: dict[str, Any]) -> None:
    """Relayed delta fields: strings (refusal, reasoning text) concatenate, lists extend."""
    for key, value in extra.items():
        old = target.get(key)
        if isinstance(old, str) and isinstance(value, str):
            target[key] = old + value
        elif isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        else:
            target[key] = value


class ChoiceAssembly:
    """One choice of a non-streamed chat answer, built from its events."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.delta_extra: dict[str, Any] = {}
        self.logprobs_extra: dict[str, Any] = {}

    def add(self, chunk: TokenChunk) -> None:
        self.parts.append(chunk.text)
        self.logprobs.extend(chat_logprob_entry(item) for item in chunk.logprobs)
        if chunk.tool_calls:
            merge_tool_fragments(self.tool_calls, chunk.tool_calls)
        if chunk.extra:
            merge_extra(self.delta_extra, chunk.extra.get("delta") or {})
            merge_extra(self.logprobs_extra, chunk.extra.get("logprobs") or {})

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def message(self) -> dict[str, Any]:
        text = self.text
        message: dict[str, Any] = {
            "role": "assistant",
            # OpenAI sends null content with a tool call or a refusal and no text.
            "content": None if ((self.tool_calls or self.delta_extra.get("refusal")) and not text) else text,
            "refusal": None,
        }
        message.update({k: v for k, v in self.delta_extra.items() if k not in ("role", "content")})
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message

    def logprobs_block(self) -> dict[str, Any]:
        return {"content": self.logprobs, "refusal": None} | self.logprobs_extra
