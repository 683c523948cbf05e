"""Replace detected spans with typed placeholders, and put the originals back in the answer.

One :class:`Redactor` lives for one request: the same value always gets the same
placeholder (so the upstream model can still tell two e-mail addresses apart), and
placeholders never collide with text already in the conversation. :class:`StreamRestorer`
undoes the substitution on a streamed answer, holding back a trailing fragment that could
still grow into a placeholder (``"<EMA"`` then ``"IL_1> ..."``) until the next chunk decides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from routers.privacy.detectors import Span

PLACEHOLDER_LABELS: dict[str, str] = {
    "email": "EMAIL",
    "phone": "PHONE",
    "payment_card": "CARD",
    "iban": "IBAN",
    "national_id": "NATIONAL_ID",
    "secret": "SECRET",
}
_PLACEHOLDER = re.compile(r"<[A-Z_]+_\d+>")
# A suffix that could be the start of a placeholder still being streamed.
_PARTIAL_PLACEHOLDER = re.compile(r"<(?:[A-Z_]+(?:_\d*)?)?\Z")
_MAX_PLACEHOLDER_LEN = 32


class Redactor:
    """Per-request mapping between sensitive values and their placeholders."""

    def __init__(self, existing_text: str = "") -> None:
        self._existing = existing_text
        self._by_value: dict[str, str] = {}
        self.originals: dict[str, str] = {}
        self._counters: dict[str, int] = {}

    def placeholder_for(self, value: str, kind: str) -> str:
        known = self._by_value.get(value)
        if known is not None:
            return known
        label = PLACEHOLDER_LABELS.get(kind, kind.upper())
        while True:
            self._counters[label] = self._counters.get(label, 0) + 1
            placeholder = f"<{label}_{self._counters[label]}>"
            # Skip a name the client's own text already uses, or restoring would rewrite it.
            if placeholder not in self._existing:
                break
        self._by_value[value] = placeholder
        self.originals[placeholder] = value
        return placeholder

    def redact(self, text: str, spans: Iterable[Span]) -> str:
        """``text`` with each (non-overlapping, sorted) span replaced by its placeholder."""
        parts: list[str] = []
        cursor = 0
        for span in spans:
            parts.append(text[cursor:span.start])
            parts.append(self.placeholder_for(text[span.start:span.end], span.kind))
            cursor = span.end
        parts.append(text[cursor:])
        return "".join(parts)

    def restore(self, text: str, escape: Callable[[str], str] | None = None) -> str:
        """Placeholders this redactor issued, replaced by their originals (passed through
        ``escape`` first, e.g. to sit inside a JSON string); others left alone."""
        if "<" not in text or not self.originals:
            return text

        def original(match: re.Match[str]) -> str:
            value = self.originals.get(match.group())
            if value is None:
                return match.group()
            return escape(value) if escape is not None else value

        return _PLACEHOLDER.sub(original, text)


class StreamRestorer:
    """Restores placeholders in a stream of text chunks whose boundaries fall anywhere."""

    def __init__(self, redactor: Redactor, escape: Callable[[str], str] | None = None) -> None:
        self._redactor = redactor
        self._escape = escape
        self._pending = ""

    def feed(self, chunk: str) -> str:
        """The restored text that is safe to emit now (possibly empty)."""
        text = self._pending + chunk
        hold = _held_suffix_start(text)
        self._pending = text[hold:]
        return self._redactor.restore(text[:hold], self._escape)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the stream."""
        text, self._pending = self._pending, ""
        return self._redactor.restore(text, self._escape)


def _json_string_body(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


class ToolCallRestorer:
    """Restores placeholders in streamed tool-call arguments: the model was shown ``<EMAIL_1>``
    and may pass it to a function, which must receive the real address. Arguments are JSON
    text streamed in pieces (one stream per call ``index``), so each call gets its own
    :class:`StreamRestorer`, and an original is JSON-escaped: it lands inside a JSON string."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._streams: dict[int, StreamRestorer] = {}

    def feed(self, fragments: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
        restored: list[dict[str, Any]] = []
        for fragment in fragments:
            function = fragment.get("function")
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if not isinstance(function, dict) or not isinstance(arguments, str):
                restored.append(fragment)
                continue
            index = int(fragment.get("index", 0))
            stream = self._streams.setdefault(index, StreamRestorer(self._redactor, _json_string_body))
            restored.append({**fragment, "function": {**function, "arguments": stream.feed(arguments)}})
        return tuple(restored)

    def flush(self) -> tuple[dict[str, Any], ...]:
        """Fragments carrying each call's held-back end of arguments, at the end of the stream."""
        tails = tuple({"index": index, "function": {"arguments": rest}}
                      for index, stream in self._streams.items() if (rest := stream.flush()))
        self._streams.clear()
        return tails


def _held_suffix_start(text: str) -> int:
    """Index from which ``text`` must be held back because a placeholder may be cut there."""
    start = text.rfind("<", max(0, len(text) - _MAX_PLACEHOLDER_LEN))
    if start == -1 or not _PARTIAL_PLACEHOLDER.match(text, start):
        return len(text)
    return start
