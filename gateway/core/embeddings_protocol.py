"""OpenAI's ``POST /v1/embeddings``: the request model and the response body."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.core.protocol import TOKEN_ID_MAX


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("input must not be empty")
        rows = value if isinstance(value[0], list) else [value] if isinstance(value[0], int) else []
        for row in rows:
            if not row:
                raise ValueError("token arrays must not be empty")
            if any(not 0 <= t < TOKEN_ID_MAX for t in row):
                raise ValueError("token ids must be integers in [0, 2^31)")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], str):
            return [v for v in value if isinstance(v, str)]
        if isinstance(value[0], int):
            return [[t for t in value if isinstance(t, int)]]
        return [list(row) for row in value if isinstance(row, list)]

    def relayed(self) -> dict[str, Any]:
        """Fields an upstream embedding backend receives besides ``model`` and ``input``."""
        fields = self.model_dump(exclude_unset=True, exclude={"model", "input"})
        fields.update(self.model_extra or {})
        return {k: v for k, v in fields.items() if v is not None}


def _encoded(vector: list[float], encoding: str | None) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI encodes it
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def embedding_body(vectors: list[list[float]], model: str, prompt_tokens: int, encoding: str | None) -> dict[str, Any]:
    return {
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    model: str
    data: list[EmbeddingItem]
    usage: EmbeddingUsage
