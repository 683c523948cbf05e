"""Token ids to streamed text, and stop sequences in streamed text (engine-independent).

Lives in core so strategies that drive a :class:`gateway.core.backend.TokenScorer` themselves
(speculative decoding) stream text exactly as the backends do.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from gateway.core.backend import Detokenizer


class Utf8Detokenizer(Detokenizer):
    """Text deltas from each token's raw bytes (``pieces[id]``), through an incremental UTF-8
    decoder: a character split across tokens comes out whole once its last byte arrives.
    Control tokens have empty pieces, so they never reach the text."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = pieces
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        text: str = self._decoder.decode(self._pieces[token_id])
        return text


class IncrementalDetokenizer(Detokenizer):
    """Text deltas from a Hugging Face tokenizer's ``decode`` (the transformers engine).

    Decoding a token alone mangles multi-byte characters and leading spaces, so each delta
    is the difference between decoding a short window with and without the new tokens; a
    delta ending in U+FFFD (an incomplete UTF-8 sequence) is held until it completes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            delta: str = full[len(prefix) :]
            return delta
        return ""


class StopMatcher:
    """Finds stop sequences in streamed text, holding back a tail that may start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop sequence was hit)."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
