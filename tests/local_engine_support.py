"""Helpers of the local-engine tests: a started backend per engine, and one call's full result."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.local.config import LocalBackend
from gateway.core.backend import (
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
)

ENGINES = ["llamacpp", "transformers"]


def models_dir() -> Path:
    return Path(os.environ.get("SLM_GATEWAY_MODELS", "~/.cache/slm-gateway/models")).expanduser()


def coder_gguf(size: str) -> Path:
    return models_dir() / f"qwen2.5-coder-{size}-instruct-q4_k_m.gguf"


@asynccontextmanager
async def started(engine: str, model: str = "smollm2", **settings: Any) -> AsyncIterator[LocalModelBackend]:
    """A backend on ``engine``, one thread (the box is shared: never oversubscribe)."""
    backend = LocalModelBackend("slm", LocalBackend(type="local", model=model, engine=engine,
                                                    threads=1, **settings))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


@dataclass
class Result:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: GenerationDone | None = None
    arrivals: list[float] = field(default_factory=list)


async def collect(events: AsyncIterator[GenerationEvent]) -> Result:
    result = Result()
    async for event in events:
        if isinstance(event, TokenChunk):
            result.text += event.text
            result.token_ids += event.token_ids
            result.logprobs += event.logprobs
            result.arrivals.append(time.perf_counter())
        else:
            result.done = event
    return result


async def chat(backend: LocalModelBackend, prompt: str, **params: Any) -> Result:
    params.setdefault("temperature", 0.0)
    return await collect(backend.stream_chat([ChatMessage(role="user", content=prompt)], SamplingParams(**params)))


async def complete(backend: LocalModelBackend, prompt: CompletionPrompt, **params: Any) -> Result:
    params.setdefault("temperature", 0.0)
    return await collect(backend.stream_completion(prompt, SamplingParams(**params)))


def llamacpp_prompt_logprobs(ids: list[int], model: str = "smollm2") -> list[float]:
    """Each prompt token's logprob given the ones before it, straight from llama.cpp: one batch
    with logits at every row, log-softmax in numpy (the reference for the gateway's echo)."""
    from gateway.backends.local.llamacpp.capi import Context, ContextOptions, Model
    from gateway.backends.local.sampling import log_softmax
    from gateway.backends.local.source import resolve_source

    path = resolve_source(model).gguf_path
    assert path is not None
    loaded = Model(path)
    context = Context(loaded, ContextOptions(n_ctx=max(256, len(ids)), n_batch=len(ids), n_outputs=len(ids),
                                                   n_seq_max=1, n_threads=1))
    try:
        context.decode(ids, list(range(len(ids))), [0] * len(ids), [True] * len(ids))
        return [float(log_softmax(context.logits(i - 1))[ids[i]]) for i in range(1, len(ids))]
    finally:
        context.free()
        loaded.free()
