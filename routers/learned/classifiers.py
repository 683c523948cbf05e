"""Scoring models over sentence embeddings: P(strong model needed | embedding).

Training uses scikit-learn; inference is a few lines of numpy over arrays saved in an ``.npz``
(no pickle: a router artifact is data, never code). Each kind exposes the same contract:
``fit(x, y, **params)``, ``predict(x) -> scores in [0, 1]``, ``arrays()`` / ``from_arrays()``.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
ClassifierKind = Literal["logreg", "knn", "mlp"]
CLASSIFIER_KINDS: tuple[ClassifierKind, ...] = ("logreg", "knn", "mlp")


class ScoringModel(Protocol):
    kind: ClassifierKind

    def predict(self, x: FloatArray) -> FloatArray: ...

    def arrays(self) -> dict[str, npt.NDArray[Any]]: ...

    def params(self) -> dict[str, Any]: ...


def _sigmoid(z: npt.NDArray[Any]) -> FloatArray:
    probability: FloatArray = (1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))).astype(np.float32)
    return probability


class LogRegModel:
    """L2-regularised logistic regression: one dot product per request."""

    kind: ClassifierKind = "logreg"

    def __init__(self, weights: FloatArray, bias: float, c: float) -> None:
        self.weights, self.bias, self.c = weights, bias, c

    @classmethod
    def fit(cls, x: FloatArray, y: npt.NDArray[np.bool_], *, c: float = 1.0, seed: int = 0) -> LogRegModel:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
        return cls(model.coef_[0].astype(np.float32), float(model.intercept_[0]), c)

    def predict(self, x: FloatArray) -> FloatArray:
        return _sigmoid(x @ self.weights + self.bias)

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"weights": self.weights, "bias": np.array([self.bias], dtype=np.float32)}

    def params(self) -> dict[str, Any]:
        return {"c": self.c}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]], params: dict[str, Any]) -> LogRegModel:
        return cls(arrays["weights"].astype(np.float32), float(arrays["bias"][0]), float(params["c"]))


class KnnModel:
    """Share of "strong needed" among the k most similar training questions (cosine)."""

    kind: ClassifierKind = "knn"

    def __init__(self, points: FloatArray, labels: npt.NDArray[np.bool_], k: int) -> None:
        self.points, self.labels, self.k = points, labels, k

    @classmethod
    def fit(cls, x: FloatArray, y: npt.NDArray[np.bool_], *, k: int = 50, seed: int = 0) -> KnnModel:
        return cls(x.astype(np.float32), y.astype(bool), min(k, len(x)))

    def predict(self, x: FloatArray) -> FloatArray:
        similarity = x.astype(np.float32) @ self.points.T  # embeddings are unit vectors
        k = min(self.k, self.points.shape[0])
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        share: FloatArray = self.labels[nearest].mean(axis=1).astype(np.float32)
        return share

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        # float16 halves the artifact; cosine ranks are unaffected at this precision.
        return {"points": self.points.astype(np.float16), "labels": self.labels}

    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]], params: dict[str, Any]) -> KnnModel:
        return cls(arrays["points"].astype(np.float32), arrays["labels"].astype(bool), int(params["k"]))


class MlpModel:
    """One hidden ReLU layer, logistic output, trained with early stopping."""

    kind: ClassifierKind = "mlp"

    def __init__(self, layers: list[tuple[FloatArray, FloatArray]], hidden: int, alpha: float) -> None:
        self.layers, self.hidden, self.alpha = layers, hidden, alpha

    @classmethod
    def fit(
        cls, x: FloatArray, y: npt.NDArray[np.bool_], *, hidden: int = 64, alpha: float = 1e-2, seed: int = 0,
    ) -> MlpModel:
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(
            hidden_layer_sizes=(hidden,), alpha=alpha, early_stopping=True, max_iter=300, random_state=seed,
        ).fit(x, y)
        layers = [
            (w.astype(np.float32), b.astype(np.float32))
            for w, b in zip(model.coefs_, model.intercepts_, strict=True)
        ]
        return cls(layers, hidden, alpha)

    def predict(self, x: FloatArray) -> FloatArray:
        h: npt.NDArray[Any] = x.astype(np.float32)
        for w, b in self.layers[:-1]:
            h = np.maximum(h @ w + b, 0.0)
        w, b = self.layers[-1]
        return _sigmoid((h @ w + b)[:, 0])

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {}
        for i, (w, b) in enumerate(self.layers):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out

    def params(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "alpha": self.alpha, "layers": len(self.layers)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]], params: dict[str, Any]) -> MlpModel:
        layers = [
            (arrays[f"w{i}"].astype(np.float32), arrays[f"b{i}"].astype(np.float32))
            for i in range(int(params["layers"]))
        ]
        return cls(layers, int(params["hidden"]), float(params["alpha"]))


def fit_classifier(
    kind: ClassifierKind, x: FloatArray, y: npt.NDArray[np.bool_], **params: Any,
) -> ScoringModel:
    if y.all() or not y.any():
        raise ValueError("training labels are all one class: nothing to learn")
    if kind == "logreg":
        return LogRegModel.fit(x, y, **params)
    if kind == "knn":
        return KnnModel.fit(x, y, **params)
    if kind == "mlp":
        return MlpModel.fit(x, y, **params)
    raise ValueError(f"unknown classifier {kind!r}; choose from {CLASSIFIER_KINDS}")


def classifier_from_arrays(
    kind: str, arrays: dict[str, npt.NDArray[Any]], params: dict[str, Any],
) -> ScoringModel:
    if kind == "logreg":
        return LogRegModel.from_arrays(arrays, params)
    if kind == "knn":
        return KnnModel.from_arrays(arrays, params)
    if kind == "mlp":
        return MlpModel.from_arrays(arrays, params)
    raise ValueError(f"unknown classifier {kind!r} in router artifact")
