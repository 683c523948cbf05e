"""What the ``openai`` backend sends and what it keeps of the answer: a faithful relay.

Requests: every field the client set reaches the upstream as sent (``SamplingParams.extra``:
tools, tool_choice, response_format, parallel_tool_calls, logit_bias, user, ...), and each
message in the client's own shape (content parts, ``content: null``, tool calls) unless a
strategy rewrote its text. Answers: besides text and logprobs, the upstream's tool-call
fragments, refusal and any other delta field, its finish reason, ``system_fingerprint``,
``service_tier`` and usage details travel on to the client.
"""

from __future__ import annotations

from typing import Any

from gateway.core.backend import ChatMessage, GenerationDone, TokenChunk, TokenLogprob, TopLogprob
from gateway.core.errors import UpstreamError

_DELTA_OWN = frozenset({"role", "content", "tool_calls"})  # what TokenChunk carries typed
_USAGE_COUNTS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})
_RESPONSE_FIELDS = ("system_fingerprint", "service_tier")
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def _wire_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict)
                   and p.get("type") in ("text", "input_text"))


def wire_message(message: ChatMessage) -> dict[str, Any]:
    """The message as the client sent it, while a strategy has not rewritten it (then the
    rewritten text: privacy redaction must never be undone by relaying the original)."""
    wire = message.wire
    if wire is not None and _wire_text(wire) == message.content and wire.get("tool_calls") == message.tool_calls:
        return wire
    return message.model_dump(exclude_none=True)


class StreamRelay:
    """Folds an upstream's stream events into our chunks, and keeps its usage, model and finish.

    Everything that arrived in one network read becomes one chunk (text and logprobs
    concatenated, tool-call fragments of one call merged): an upstream that outpaces us costs
    one pass through the layers above per read, not per token, while a slower one still
    streams token by token.
    """

    def __init__(self, backend: str, model: str, chat: bool) -> None:
        self.backend = backend
        self.model = model
        self.chat = chat
        self.prompt_tokens = self.completion_tokens = self.pieces = 0
        self.extra_usage: dict[str, Any] = {}
        self.usage_fields: dict[str, Any] = {}
        self.response_fields: dict[str, Any] = {}
        self.finish = "stop"

    def absorb(self, payloads: list[dict[str, Any]]) -> TokenChunk | None:
        texts: list[str] = []
        logprobs: list[TokenLogprob] = []
        tool_calls: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        for payload in payloads:
            if "error" in payload:
                raise UpstreamError(f"upstream {self.backend!r} failed mid-stream", backend=self.backend,
                                    code="upstream_stream_error")
            self._absorb_top(payload)
            for choice in payload.get("choices") or []:
                chunk = chat_chunk(choice) if self.chat else completion_chunk(choice)
                if chunk.text or chunk.logprobs or chunk.tool_calls or chunk.extra:
                    self.pieces += 1 if (chunk.text or chunk.logprobs) else 0
                    texts.append(chunk.text)
                    logprobs.extend(chunk.logprobs)
                    _merge_fragments(tool_calls, chunk.tool_calls)
                    _merge_extra(extra, chunk.extra or {})
                if choice.get("finish_reason"):
                    self.finish = choice["finish_reason"]
        if not (texts or tool_calls or extra):
            return None
        return TokenChunk(text="".join(texts), logprobs=tuple(logprobs), tool_calls=tuple(tool_calls),
                          extra=extra or None)

    def _absorb_top(self, payload: dict[str, Any]) -> None:
        self.model = payload.get("model") or self.model
        for name in _RESPONSE_FIELDS:
            if payload.get(name) is not None:
                self.response_fields[name] = payload[name]
        usage = payload.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.usage_fields = {k: v for k, v in usage.items() if k not in _USAGE_COUNTS and v is not None}
            # e.g. accepted/rejected prediction tokens (OpenAI Predicted Outputs), for the record
            details = usage.get("completion_tokens_details")
            if isinstance(details, dict):
                self.extra_usage["completion_tokens_details"] = details

    def done(self) -> GenerationDone:
        return GenerationDone(
            finish_reason=self.finish if self.finish in FINISH_REASONS else "stop",  # type: ignore[arg-type]
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens or self.pieces,
            model=self.model, extra_usage=self.extra_usage, response_fields=self.response_fields,
            usage_fields=self.usage_fields,
        )


def _merge_fragments(calls: list[dict[str, Any]], fragments: tuple[dict[str, Any], ...]) -> None:
    """Consecutive fragments of one call (same index) become one: clients accumulate by index,
    and one fragment per call per chunk is what OpenAI itself sends."""
    for fragment in fragments:
        last = calls[-1] if calls else None
        if last is None or last.get("index") != fragment.get("index") or fragment.get("id"):
            calls.append({**fragment, "function": dict(fragment.get("function") or {})}
                         if "function" in fragment else dict(fragment))
            continue
        function = fragment.get("function") or {}
        merged = last.setdefault("function", {})
        if function.get("arguments"):
            merged["arguments"] = str(merged.get("arguments") or "") + str(function["arguments"])
        if function.get("name"):
            merged["name"] = str(merged.get("name") or "") + str(function["name"])


def _merge_extra(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for section, fields in extra.items():
        into = target.setdefault(section, {})
        for key, value in fields.items():
            old = into.get(key)
            if isinstance(old, str) and isinstance(value, str):
                into[key] = old + value
            elif isinstance(old, list) and isinstance(value, list):
                into[key] = [*old, *value]
            else:
                into[key] = value


def _top_list(top: Any) -> tuple[TopLogprob, ...]:
    return tuple(TopLogprob(t["token"], float(t["logprob"])) for t in top or [])


def chat_chunk(choice: dict[str, Any]) -> TokenChunk:
    delta = choice.get("delta") or {}
    block = choice.get("logprobs") or {}
    content = block.get("content") or []
    logprobs = tuple(
        TokenLogprob(token=c["token"], logprob=float(c["logprob"]), top=_top_list(c.get("top_logprobs")))
        for c in content
    )
    extra: dict[str, Any] = {}
    others = {k: v for k, v in delta.items() if k not in _DELTA_OWN and v is not None}
    if others:
        extra["delta"] = others
    block_others = {k: v for k, v in block.items() if k != "content" and v is not None}
    if block_others:
        extra["logprobs"] = block_others
    calls = tuple(c for c in delta.get("tool_calls") or [] if isinstance(c, dict))
    return TokenChunk(text=delta.get("content") or "", logprobs=logprobs, tool_calls=calls, extra=extra or None)


def _legacy_logprobs(block: dict[str, Any] | None) -> list[TokenLogprob | None]:
    if not block:
        return []
    tokens = block.get("tokens") or []
    values = block.get("token_logprobs") or []
    tops = block.get("top_logprobs") or [None] * len(tokens)
    out: list[TokenLogprob | None] = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        if value is None:
            out.append(None)
            continue
        alternatives = tuple(TopLogprob(t, float(lp)) for t, lp in (top or {}).items())
        out.append(TokenLogprob(token=token, logprob=float(value), top=alternatives))
    return out


def completion_chunk(choice: dict[str, Any]) -> TokenChunk:
    entries = [e for e in _legacy_logprobs(choice.get("logprobs")) if e is not None]
    return TokenChunk(text=choice.get("text") or "", logprobs=tuple(entries))
