"""Where draft tokens come from: a smaller in-process model, or prompt lookup.

A :class:`ModelDrafter` asks its TokenScorer for one next-token row at a time after the
committed sequence plus the drafts so far; with prefix reuse each call computes only the new
token (and, at a round's start, the target's tokens committed since the draft last saw the
sequence). A :class:`NgramDrafter` copies what followed the sequence's tail earlier on.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.core.backend import TokenScorer
from routers.speculative.acceptance import FloatArray, draw, sampling_probs
from routers.speculative.config import NgramSettings
from routers.speculative.generation import Decoding
from routers.speculative.ngram import prompt_lookup


@dataclass(frozen=True, slots=True)
class Proposal:
    tokens: list[int]
    probs: FloatArray | None  # (k, V): the q each draft was sampled from; None = point masses
    seconds: float
    # Mean time of the draft calls after the first (the first also catches up on the tokens the
    # target committed since the draft last saw the sequence); None when there was one call.
    step_seconds: float | None = None


class Drafter(ABC):
    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def limit(self, sequence: Sequence[int], max_k: int) -> int:
        """How many tokens this drafter could propose after ``sequence`` now (0: none)."""

    @abstractmethod
    async def propose(self, sequence: Sequence[int], k: int, decoding: Decoding,
                      rng: np.random.Generator) -> Proposal:
        """Up to ``k`` draft tokens after ``sequence``."""


class NgramDrafter(Drafter):
    """Prompt lookup: free drafts, deterministic (a point-mass q when sampling)."""

    def __init__(self, settings: NgramSettings) -> None:
        super().__init__("ngram")
        self.settings = settings
        self._cached: tuple[int, list[int]] | None = None  # (sequence length, lookup) of the last call

    def _lookup(self, sequence: Sequence[int]) -> list[int]:
        # limit() and propose() run on the same sequence in one round: look it up once.
        if self._cached is None or self._cached[0] != len(sequence):
            s = self.settings
            self._cached = (len(sequence), prompt_lookup(sequence, s.min_n, s.max_n, s.k))
        return self._cached[1]

    def limit(self, sequence: Sequence[int], max_k: int) -> int:
        return min(len(self._lookup(sequence)), max_k)

    async def propose(self, sequence: Sequence[int], k: int, decoding: Decoding,
                      rng: np.random.Generator) -> Proposal:
        started = time.perf_counter()
        tokens = self._lookup(sequence)[:k]
        self._cached = None
        return Proposal(tokens, None, time.perf_counter() - started)


class ModelDrafter(Drafter):
    """A smaller model with the target's vocabulary, through its TokenScorer."""

    def __init__(self, name: str, scorer: TokenScorer) -> None:
        super().__init__(name)
        self.scorer = scorer

    def limit(self, sequence: Sequence[int], max_k: int) -> int:
        return max_k

    async def propose(self, sequence: Sequence[int], k: int, decoding: Decoding,
                      rng: np.random.Generator) -> Proposal:
        started = time.perf_counter()
        context = list(sequence)
        drafts: list[int] = []
        rows: list[FloatArray] = []
        first_done: float | None = None
        for _ in range(k):
            scores = await self.scorer.score_next_tokens(context, len(context), want_logits=not decoding.greedy)
            first_done = first_done or time.perf_counter()
            if decoding.greedy:
                token = int(scores.argmax[-1])
            else:
                q = sampling_probs(scores.logits[-1], decoding.temperature, decoding.top_p)[0]
                token = draw(q, rng)
                rows.append(q)
            drafts.append(token)
            context.append(token)
            if token in self.scorer.eos_token_ids:
                break  # nothing follows the end of the answer
        probs = np.stack(rows) if rows else None
        ended = time.perf_counter()
        step = (ended - first_done) / (len(drafts) - 1) if first_done is not None and len(drafts) > 1 else None
        return Proposal(drafts, probs, ended - started, step)
