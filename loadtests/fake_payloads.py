"""OpenAI-shaped bodies for the fake upstream: chat / text completions, stream chunks, usage, errors.

Pure functions over plain dicts so the ASGI app stays a thin transport layer. Token text is
a fixed cycle of words; every token is one word with a leading space, so "tokens" here are
exact and usage numbers are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

WORDS: tuple[str, ...] = (
    " The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
    " A", " small", " model", " answers", " most", " questions", " well", " enough", ",",
    " and", " a", " large", " one", " handles", " the", " rest", ".",
)
DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Generation:
    """What one request will produce, decided before any byte is sent."""

    kind: str  # "chat" | "completion"
    response_id: str
    created: int
    model: str
    tokens: tuple[str, ...]
    prompt_tokens: int
    finish_reason: str
    logprobs: bool
    top_logprobs: int
    include_usage: bool

    @property
    def usage(self) -> dict[str, int]:
        completion = len(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def token_at(index: int) -> str:
    return WORDS[index % len(WORDS)]


def count_words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    """A message's text, whether a string or OpenAI's list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_token_count(kind: str, body: dict[str, Any]) -> int:
    """Word count of the prompt, plus a few tokens per chat message for the role markup."""
    if kind == "chat":
        messages = body.get("messages") or []
        return sum(count_words(_content_text(m.get("content"))) + 4 for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        return count_words(prompt)
    if isinstance(prompt, list):
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return sum(count_words(p) if isinstance(p, str) else len(p) for p in prompt)
    return 0


def plan_generation(kind: str, body: dict[str, Any], *, response_id: str, created: int,
                    completion_tokens: int) -> Generation:
    """Decide the tokens: ``completion_tokens`` of them, cut short by the request's max_tokens."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    count = completion_tokens
    finish_reason = "stop"
    if isinstance(limit, int) and 0 <= limit < completion_tokens:
        count, finish_reason = limit, "length"
    stream_options = body.get("stream_options") or {}
    if kind == "chat":
        wants_logprobs = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0)
    else:
        # /v1/completions: logprobs is an int (number of alternatives), 0 still means "on".
        wants_logprobs = body.get("logprobs") is not None
        top = int(body.get("logprobs") or 0)
    return Generation(
        kind=kind, response_id=response_id, created=created, model=str(body.get("model") or "fake-model"),
        tokens=tuple(token_at(i) for i in range(count)), prompt_tokens=prompt_token_count(kind, body),
        finish_reason=finish_reason, logprobs=wants_logprobs, top_logprobs=top,
        include_usage=bool(stream_options.get("include_usage")),
    )


def _token_logprob(index: int) -> float:
    # Deterministic, varied, always < 0: enough for confidence-based strategies to have signal.
    return -0.05 - 0.1 * (index % 7)


def _top_alternatives(index: int, count: int) -> list[tuple[str, float]]:
    return [(token_at(index + k), _token_logprob(index) - k) for k in range(count)]


def chat_logprobs(tokens: tuple[str, ...], start: int, top: int) -> dict[str, Any]:
    content = []
    for offset, token in enumerate(tokens):
        index = start + offset
        content.append({
            "token": token, "logprob": _token_logprob(index), "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                             for t, lp in _top_alternatives(index, top)],
        })
    return {"content": content, "refusal": None}


def completion_logprobs(tokens: tuple[str, ...], start: int, top: int, text_offset: int) -> dict[str, Any]:
    offsets, position = [], text_offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": list(tokens),
        "token_logprobs": [_token_logprob(start + i) for i in range(len(tokens))],
        "top_logprobs": ([dict(_top_alternatives(start + i, top)) for i in range(len(tokens))]
                         if top else None),
        "text_offset": offsets,
    }


def full_response(gen: Generation) -> dict[str, Any]:
    """The non-streamed body."""
    text = "".join(gen.tokens)
    if gen.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": chat_logprobs(gen.tokens, 0, gen.top_logprobs) if gen.logprobs else None,
            "finish_reason": gen.finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0, "text": text,
            "logprobs": completion_logprobs(gen.tokens, 0, gen.top_logprobs, 0) if gen.logprobs else None,
            "finish_reason": gen.finish_reason,
        }
        obj = "text_completion"
    return {"id": gen.response_id, "object": obj, "created": gen.created, "model": gen.model,
            "system_fingerprint": "fake-upstream", "choices": [choice], "usage": gen.usage}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(gen: Generation, choices: list[dict[str, Any]]) -> dict[str, Any]:
    obj = "chat.completion.chunk" if gen.kind == "chat" else "text_completion"
    chunk: dict[str, Any] = {"id": gen.response_id, "object": obj, "created": gen.created, "model": gen.model,
                             "system_fingerprint": "fake-upstream", "choices": choices}
    if gen.include_usage:
        chunk["usage"] = None  # OpenAI sends an explicit null on every chunk but the last
    return chunk


def stream_events(gen: Generation) -> Iterator[tuple[bool, bytes]]:
    """SSE events in OpenAI's order: (chat: role chunk), one chunk per token, finish chunk,
    (usage chunk with empty choices when include_usage), then ``data: [DONE]``.

    Yields ``(is_token, event)``: callers sleep for TTFT before the first event and
    1/tokens_per_s before every token event after the first (see fake_upstream).
    """
    if gen.kind == "chat":
        yield False, _event(_chunk(gen, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]))
    text_offset = 0
    for index, token in enumerate(gen.tokens):
        if gen.kind == "chat":
            logprobs = chat_logprobs((token,), index, gen.top_logprobs) if gen.logprobs else None
            choice: dict[str, Any] = {"index": 0, "delta": {"content": token}, "logprobs": logprobs,
                                      "finish_reason": None}
        else:
            logprobs = (completion_logprobs((token,), index, gen.top_logprobs, text_offset)
                        if gen.logprobs else None)
            choice = {"index": 0, "text": token, "logprobs": logprobs, "finish_reason": None}
        text_offset += len(token)
        yield True, _event(_chunk(gen, [choice]))
    if gen.kind == "chat":
        final: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None,
                                 "finish_reason": gen.finish_reason}
    else:
        final = {"index": 0, "text": "", "logprobs": None, "finish_reason": gen.finish_reason}
    yield False, _event(_chunk(gen, [final]))
    if gen.include_usage:
        usage_chunk = _chunk(gen, [])
        usage_chunk["usage"] = gen.usage
        yield False, _event(usage_chunk)
    yield False, DONE_EVENT


def error_body(status: int, message: str, error_type: str = "server_error") -> bytes:
    error = {"message": message, "type": error_type, "param": None, "code": str(status)}
    return orjson.dumps({"error": error})


def models_body(models: tuple[str, ...], created: int) -> bytes:
    return orjson.dumps({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "fake-upstream"} for name in models
    ]})
