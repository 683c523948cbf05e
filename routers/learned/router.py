"""The router artifact and its one scoring method (RouteLLM's contract).

A router directory holds ``router.json`` (what was trained, how, the calibrated threshold)
and ``weights.npz`` (numpy arrays, loaded with ``allow_pickle=False``). ``score(text)`` returns
the estimated probability that the strong model is needed; the one routing rule is
``score >= threshold -> strong``. The cascade strategy imports :class:`LearnedRouter` as its
optional first stage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from routers.learned.classifiers import ScoringModel, classifier_from_arrays
from routers.learned.embedder import EMBEDDING_MODEL_ID, Embedder

FORMAT_VERSION = 1
CONFIG_FILE = "router.json"
WEIGHTS_FILE = "weights.npz"


@dataclass(frozen=True)
class RouterMeta:
    classifier: str
    params: dict[str, Any]
    threshold: float
    label_rule: str
    embedding_model: str = EMBEDDING_MODEL_ID
    target_escalation: float | None = None
    training: dict[str, Any] = field(default_factory=dict)  # data file, row counts, label rate
    format_version: int = FORMAT_VERSION


class LearnedRouter:
    """Embeds a request and scores P(strong model needed)."""

    def __init__(self, model: ScoringModel, meta: RouterMeta, embedder: Embedder | None = None) -> None:
        self.model = model
        self.meta = meta
        self._embedder = embedder

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    @classmethod
    def load(cls, directory: Path | str, *, embedder: Embedder | None = None) -> LearnedRouter:
        path = Path(directory)
        try:
            raw = json.loads((path / CONFIG_FILE).read_text())
            with np.load(path / WEIGHTS_FILE, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a learned-router directory ({exc})") from None
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: router format {raw.get('format_version')!r}, not {FORMAT_VERSION}")
        if raw.get("embedding_model") != EMBEDDING_MODEL_ID:
            raise ValueError(f"{path}: trained on {raw.get('embedding_model')!r}, not {EMBEDDING_MODEL_ID}")
        meta = RouterMeta(**raw)
        return cls(classifier_from_arrays(meta.classifier, arrays, meta.params), meta, embedder)

    def save(self, directory: Path | str) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / WEIGHTS_FILE, allow_pickle=False, **self.model.arrays())
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.meta), indent=2) + "\n")
        return path

    def score_embeddings(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.model.predict(vectors)

    def score_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.score_embeddings(self.embedder.embed(texts))

    def score(self, text: str) -> float:
        """The probability the strong model is needed for this request."""
        return float(self.score_many([text])[0])

    def needs_strong(self, score: float, threshold: float | None = None) -> bool:
        return score >= (self.threshold if threshold is None else threshold)
