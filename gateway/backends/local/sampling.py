"""Token selection and log-probabilities from raw logits, in numpy (both engines use these).

Reported logprobs are those of the model's *raw* distribution (log-softmax of the logits,
before temperature / top-p), as vLLM reports them by default: they measure the model's
confidence, which is what cascades calibrate on, independently of the sampling settings.
Sampling draws from a per-request ``numpy.random.Generator``, so a seed reproduces a
sample on either engine given the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TokenDraw:
    token_id: int
    logprob: float  # NaN when not asked for
    top: list[tuple[int, float]]


def log_softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Row-wise log-softmax in float64 (the reference's float32 sums lose ~1e-6 here)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def top_k(logprobs: npt.NDArray[np.float64], k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (id, logprob), most likely first; ties: lowest id first."""
    k = min(k, logprobs.shape[-1])
    if k <= 0:
        return []
    candidates = np.argpartition(-logprobs, k - 1)[:k]
    order = sorted(candidates.tolist(), key=lambda i: (-logprobs[i], i))
    return [(int(i), float(logprobs[i])) for i in order]


def draw_token(
    logits: Logits, temperature: float, top_p: float, want_logprob: bool, top_k_logprobs: int,
    rng: np.random.Generator, allowed: npt.NDArray[np.bool_] | None = None,
) -> TokenDraw:
    """One token from ``logits`` (restricted to ``allowed`` when given: a grammar's mask, so
    temperature and top-p apply to the allowed tokens only); its logprob and the top-K are
    the unrestricted distribution's."""
    if allowed is None:
        # Greedy takes the first maximum: ties go to the lowest id.
        token = int(np.argmax(logits)) if temperature <= 0.0 else _sample(logits, temperature, top_p, rng)
    else:
        # Choose among the allowed ids only (ascending, so ties still go to the lowest id): the
        # same draw as over the whole row with the rest at -inf, at a fraction of the work.
        ids = np.flatnonzero(allowed)
        kept = logits[ids]
        index = int(np.argmax(kept)) if temperature <= 0.0 else _sample(kept, temperature, top_p, rng)
        token = int(ids[index])
    if not want_logprob and top_k_logprobs <= 0:
        return TokenDraw(token, float("nan"), [])
    logprobs = log_softmax(logits)
    return TokenDraw(token, float(logprobs[token]), top_k(logprobs, top_k_logprobs))


def _sample(logits: Logits, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        cumulative = np.cumsum(sorted_probs)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = int(np.searchsorted(cumulative, top_p * cumulative[-1], side="left")) + 1
        kept = order[:keep]
        kept_probs = sorted_probs[:keep]
        return int(kept[_pick(kept_probs, rng)])
    return _pick(probs, rng)


def _pick(weights: npt.NDArray[np.float64], rng: np.random.Generator) -> int:
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, len(weights) - 1)


PromptScore = tuple[float, int, list[tuple[int, float]]] | None  # (logprob, rank, top-K)


def prompt_token_scores(rows: Logits, targets: list[int], top: int) -> list[tuple[float, int, list[tuple[int, float]]]]:
    """Logprob, rank (1 = most likely) and top-K of each ``targets[i]`` under ``rows[i]``."""
    logprobs = log_softmax(rows)
    result = []
    for row, target in zip(logprobs, targets, strict=True):
        chosen = float(row[target])
        rank = int((row > chosen).sum()) + 1
        result.append((chosen, rank, top_k(row, top)))
    return result
