"""A model's generation events with its tool calls turned into OpenAI ``tool_calls``.

An in-process model writes its calls as text; an HTTP upstream sends them as ``tool_calls``
delta fragments. :func:`with_tool_calls` makes the first look like the second, so the serving
layer assembles both the same way (``message.tool_calls`` whole, streamed fragments,
``finish_reason: tool_calls``) and a cascade checks both the same way.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from gateway.core.backend import GenerationDone, GenerationEvent, TokenChunk, TokenLogprob
from gateway.core.structured.tool_calls import ToolCallStream, bare_calls


class _Calls:
    """The calls kept so far: numbered from 0, repeats and (without parallel) all but the first
    refused, which ends the answer."""

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel
        self.count = 0
        self.ended = False
        self._seen: set[tuple[str, str]] = set()

    def keep(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = []
        for fragment in found:
            key = (fragment["function"]["name"], fragment["function"]["arguments"])
            if self.ended or key in self._seen:
                self.ended = True
                break
            self._seen.add(key)
            kept.append({**fragment, "index": self.count})
            self.count += 1
            self.ended = not self.parallel
        return kept


async def with_tool_calls(
    events: AsyncGenerator[GenerationEvent, None], *, parallel: bool, names: Collection[str] = (),
    halt: Callable[[], None] | None = None,
) -> AsyncGenerator[GenerationEvent, None]:
    """``events`` with tool-call blocks as ``TokenChunk.tool_calls`` fragments (one whole call
    each, when its block closes). Whitespace between and around calls is not content (OpenAI's
    message has ``content: null`` beside its calls); a malformed block stays in the content.

    An answer that starts with ``{`` or ``[`` is held back to its end: if it is a bare call of one
    of ``names`` (the offered functions: :func:`bare_calls`) it becomes the call, else it is sent
    as the content it is. The answer ends at the first call when ``parallel`` is false
    (``parallel_tool_calls: false``), and at a call that repeats an earlier one exactly: a small
    model allowed several calls (``tool_choice: required``) tends to repeat its call until the
    token limit. ``halt`` then stops the generation; what the model still writes is dropped.
    """
    stream = ToolCallStream()
    calls = _Calls(parallel)
    spaces = ""  # whitespace-only content, held until text follows it (else it is dropped)
    bare: str | None = None  # the answer so far, while it may be a bare JSON call
    said = False  # some text went out as content
    logprobs: list[TokenLogprob] = []
    token_ids: list[int] = []
    async with aclosing(events):
        async for event in events:
            done = event if isinstance(event, GenerationDone) else None
            if calls.ended:
                if done is not None:
                    yield _finished(done, called=True)
                    return
                continue
            if isinstance(event, TokenChunk):
                content, found = stream.feed(event.text)
                logprobs.extend(event.logprobs)
                token_ids.extend(event.token_ids)
            else:
                content, found = stream.feed("")
                content += stream.flush()
            if bare is None and not said and calls.count == 0 and not found \
                    and content.lstrip().startswith(("{", "[")):
                bare = ""
            if bare is not None:
                if found:  # a marked call after all: what was held is content
                    content, bare = bare + content, None
                else:
                    bare += content
                    content = ""
                    if done is not None:
                        parsed = bare_calls(bare, names)
                        if parsed is None:
                            content = bare
                        else:
                            found = [call.fragment(i) for i, call in enumerate(parsed)]
            fragments = calls.keep(found)
            if fragments:
                spaces = ""  # the whitespace before a call
            if calls.ended:
                content = ""  # the call ends the answer: nothing after it in this piece counts
            if content and not content.strip():
                spaces, content = spaces + content, ""
            elif content:
                spaces, content = "", spaces + content
            if done is not None and spaces and not calls.count:
                content, spaces = content + spaces, ""
            said = said or bool(content)
            if content or fragments or logprobs:
                yield TokenChunk(text=content, logprobs=tuple(logprobs), token_ids=tuple(token_ids),
                                 tool_calls=tuple(fragments))
                logprobs, token_ids = [], []
            if done is not None:
                yield _finished(done, called=calls.count > 0)
                return
            if calls.ended and halt is not None:
                halt()


def _finished(done: GenerationDone, called: bool) -> GenerationDone:
    # A model stops after its last call (or was stopped there); one cut off by the token limit
    # keeps "length".
    if called and done.finish_reason in ("stop", "cancelled"):
        return replace(done, finish_reason="tool_calls")
    return done
