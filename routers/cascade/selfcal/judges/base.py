"""Agreement judges: does the small tier's answer agree with the next tier's?

A judge is built from its config (:data:`routers.cascade.selfcal.config.JudgeConfig`, chosen by
its ``type`` tag) and answers one pair at a time inside a shadow job: the pure ones
(:mod:`.text`: exact, normalized, json) compare the answers themselves; the calling ones
(:mod:`.calling`: embedding, llm) make one recorded upstream call through the shadow job's
context, so that call is priced at its backend's price and counted in the shadow budget.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.backend import TokenChunk
from gateway.core.config import Price
from gateway.core.strategy import ChatRequestView, RequestContext
from gateway.core.structured.tool_calls import merge_tool_fragments

CHARS_PER_TOKEN = 4  # a judge's prompt estimate for the shadow budget; the real cost is recorded


@dataclass(frozen=True, slots=True)
class Answer:
    """One tier's whole answer: its text and its tool calls (OpenAI's fragments folded into calls)."""

    text: str
    tool_calls: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, chunks: Iterable[TokenChunk]) -> Answer:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for chunk in chunks:
            texts.append(chunk.text)
            merge_tool_fragments(calls, chunk.tool_calls)
        return cls("".join(texts), tuple(calls))

    def as_text(self) -> str:
        """What a label stores and a text judge reads: the text, then any tool calls as JSON."""
        if not self.tool_calls:
            return self.text
        calls = orjson.dumps([c.get("function", c) for c in self.tool_calls]).decode()
        return f"{self.text}\n{calls}" if self.text else calls


@dataclass(frozen=True, slots=True)
class Verdict:
    agree: bool
    detail: dict[str, Any] = field(default_factory=dict)  # what decided it (similarity, the judge's reply...)


class Judge(ABC):
    """Compares two answers to the same request."""

    type: str

    @abstractmethod
    async def judge(self, request: ChatRequestView, small: Answer, large: Answer, ctx: RequestContext) -> Verdict:
        """The verdict; any upstream call goes through ``ctx`` (the shadow job's record)."""

    def estimated_cost_usd(self, request: ChatRequestView, small: Answer, large: Answer,
                           prices: Mapping[str, Price]) -> float:
        """What the judgement may cost, for the shadow budget's admission (0 for pure judges)."""
        return 0.0


def estimated_tokens(*texts: str) -> int:
    return sum(len(text) for text in texts) // CHARS_PER_TOKEN + 1
