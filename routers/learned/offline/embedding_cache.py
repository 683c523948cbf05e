"""A disk cache of embeddings for training and evaluation (reruns cost one hash, not minutes of CPU)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from routers.learned.embedder import EMBEDDING_DIM, EMBEDDING_MODEL_ID, Embedder, FloatArray


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slm-gateway" / "embeddings"


def embed_cached(
    texts: Sequence[str], embedder_factory: Callable[[], Embedder] = Embedder, *,
    cache_dir: Path | None = None, progress: bool = True,
) -> FloatArray:
    """Embeddings of ``texts``, from a disk cache keyed by the model id and every text.

    Reruns of training/evaluation on the same file cost one hash instead of minutes of CPU.
    """
    digest = hashlib.sha256(EMBEDDING_MODEL_ID.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    directory = cache_dir or default_cache_dir()
    path = directory / f"{digest.hexdigest()[:32]}.npy"
    if path.is_file():
        cached: FloatArray = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        if cached.shape == (len(texts), EMBEDDING_DIM):
            return cached
    vectors = embedder_factory().embed(texts, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return vectors
