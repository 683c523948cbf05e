"""The ``echo`` backend: the request's text back, one word per token (docs/extending.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from gateway.backends.echo.config import EchoBackend
from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)

MODEL_NAME = "echo"


class EchoingBackend(Backend):
    def __init__(self, name: str, config: EchoBackend) -> None:
        super().__init__(name)
        self.config = config

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True)  # nothing it is sent leaves the process

    def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        prompt_words = sum(len(m.content.split()) for m in messages)
        return self._echo(last_user, prompt_words, params)

    def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        text = prompt.text if prompt.text is not None else " ".join(str(t) for t in prompt.token_ids or ())
        return self._echo(text, len(text.split()), params)

    async def _echo(self, text: str, prompt_tokens: int, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        words = self.config.prefix.split() + text.split()
        limit = params.max_tokens if params.max_tokens is not None else len(words)
        for index, word in enumerate(words[:limit]):
            yield TokenChunk(word if index == 0 else " " + word)
        yield GenerationDone("length" if limit < len(words) else "stop", prompt_tokens, min(limit, len(words)),
                             MODEL_NAME)
