"""Build the llama.cpp engine a ``local`` backend config describes (blocking)."""

from __future__ import annotations

from gateway.backends.local.config import LocalBackend
from gateway.backends.local.llamacpp.capi import LlamaError
from gateway.backends.local.llamacpp.engine import LlamaCppEngine, LlamaCppOptions
from gateway.backends.local.source import ModelLoadError, ModelSource
from gateway.backends.local.threads import choose_threads


def load_llamacpp(name: str, config: LocalBackend, source: ModelSource) -> LlamaCppEngine:
    path = source.gguf_path
    if path is None:
        raise ModelLoadError(f"engine llamacpp needs a GGUF file; {source.directory} is an HF directory")
    options = LlamaCppOptions(
        kv_tokens=config.kv_tokens or config.context_length, max_running=config.max_batch_size,
        cache_slots=config.prefix_cache_slots, prefill_chunk=config.prefill_chunk, threads=config.threads or 1,
        cache_type_k=config.cache_type_k, cache_type_v=config.cache_type_v,
    )
    try:
        engine = LlamaCppEngine(path, options)
        engine.set_threads(choose_threads(name, config.threads, engine.time_decode))
    except LlamaError as exc:
        raise ModelLoadError(f"cannot load {path} with llama.cpp: {exc}") from exc
    return engine
