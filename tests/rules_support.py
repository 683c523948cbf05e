"""Shared by the rules-strategy and privacy-guard tests: in-test backends that record what they
receive, and helpers that build a ``rules`` strategy and run one request through it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.record import RequestRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext, Strategy
from routers.rules.config import RulesStrategy
from routers.rules.strategy import Rules
from routers.static.config import StaticStrategy
from routers.static.strategy import Static

CARD = "4111 1111 1111 1111"
EMAIL = "jane.roe@example.com"
REPO = Path(__file__).resolve().parent.parent


class RecordingBackend(Backend):
    """Echoes the last user message back in ``chunk_size``-character chunks; keeps every request."""

    def __init__(
        self, name: str, *, local: bool, chunk_size: int = 3, words_are_tokens: bool = False
    ) -> None:
        super().__init__(name)
        self.local = local
        self.chunk_size = chunk_size
        self.words_are_tokens = words_are_tokens
        self.received: list[list[ChatMessage]] = []
        self.extra_received: list[dict[str, Any]] = []

    @property
    def model_name(self) -> str:
        return f"{self.name}-model"

    @property
    def is_local(self) -> bool:
        return self.local

    async def tokenize(self, text: str) -> list[int] | None:
        return list(range(len(text.split()))) if self.words_are_tokens else None

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        self.received.append(list(messages))
        self.extra_received.append(dict(params.extra))
        answer = f"echo: {next(m.content for m in reversed(messages) if m.role == 'user')}"
        size = self.chunk_size
        for start in range(0, len(answer), size):
            yield TokenChunk(answer[start:start + size], token_ids=(start,))
        yield GenerationDone("stop", 1, len(answer), self.model_name)

    async def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError
        yield  # pragma: no cover

    def seen_text(self) -> str:
        messages = "\n".join(m.content for sent in self.received for m in sent)
        return messages + repr(self.extra_received)


async def build(
    config: dict[str, Any], backends: list[RecordingBackend], statics: dict[str, str] | None = None
) -> Rules:
    resources = GatewayResources(backends={b.name: b for b in backends}, prices={})
    strategies: dict[str, Strategy[Any]] = {
        name: Static(name, StaticStrategy(type="static", backend=backend), resources)
        for name, backend in (statics or {}).items()
    }
    rules = Rules("auto", RulesStrategy.model_validate({"type": "rules", **config}), resources)
    strategies["auto"] = rules
    resources.strategies.update(strategies)
    await rules.start()
    return rules


def view(text: str = "hello", **kwargs: Any) -> ChatRequestView:
    system = kwargs.pop("system", None)
    messages = ([ChatMessage(role="system", content=system)] if system else []) + [
        ChatMessage(role="user", content=text)]
    params = kwargs.pop("params", SamplingParams())
    return ChatRequestView(messages=messages, params=params, stream=True, **kwargs)


async def answer(rules: Rules, request: ChatRequestView) -> tuple[str, RequestContext, list[TokenChunk]]:
    ctx = RequestContext(RequestRecord("req-1", "auto", "chat", True), rules.resources)
    chunks: list[TokenChunk] = []
    done: list[AnswerDone] = []
    async for event in rules.chat(request, ctx):
        if isinstance(event, TokenChunk):
            chunks.append(event)
        else:
            done.append(event)
    assert len(done) == 1
    return "".join(c.text for c in chunks), ctx, chunks


def two_backends() -> tuple[RecordingBackend, RecordingBackend]:
    return RecordingBackend("slm", local=True), RecordingBackend("llm", local=False)
