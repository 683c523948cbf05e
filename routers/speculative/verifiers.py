"""The target's side of a round: next-token rows after the sequence and each draft prefix.

* :class:`LocalVerifier` — an in-process target: one ``score_next_tokens`` call over the
  sequence plus the k drafts returns the k + 1 rows in one batched pass; the engine's prefix
  reuse means only the last committed token and the drafts are computed, and rejected drafts
  are rolled back by the next call.
* :class:`RemoteVerifier` — a target behind an OpenAI-compatible server that returns prompt
  logprobs (another slm-gateway, vLLM): one ``/v1/completions`` call per round through the
  backend's own ``stream_completion`` (its timeouts, retries, circuit breaker and error
  translation), recorded as a ``verify`` call. The prompt is the committed ids, the drafts and
  one placeholder token: the placeholder's prompt-logprob entry is the target's view *after*
  the last draft (the bonus row), with the token id, so no id has to be guessed from text.
  Greedy is exact (a row's argmax is its rank-1 token). Sampling is an approximation: the
  target's distribution is known on its top K (plus the draft token) only (docs/speculative.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.core.backend import (
    Backend,
    CompletionPrompt,
    GenerationDone,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
    TokenScorer,
)
from gateway.core.errors import UpstreamError
from gateway.core.strategy import RequestContext
from routers.speculative.acceptance import FloatArray, sampling_probs
from routers.speculative.generation import Decoding


@dataclass(frozen=True, slots=True)
class TargetRows:
    argmax: list[int]  # k + 1 entries: after the sequence, after each draft prefix
    probs: FloatArray | None  # (k + 1, V) sampling distributions, when sampling
    prompt_tokens: int = 0  # remote: prompt tokens the call was billed


class Verifier(ABC):
    # How the target decodes alone (k = 0): "ids" — its own generation, streamed with token ids,
    # a stretch at a time; "text" — its own generation for the rest of the answer (text only);
    # "score" — one scorer row per token.
    alone_mode: str = "score"

    async def alone(self, sequence: Sequence[int], max_tokens: int, decoding: Decoding,
                    stop: tuple[str, ...]) -> AsyncGenerator[TokenChunk | GenerationDone, None]:
        """The target's own generation after ``sequence`` (``alone_mode`` "ids" / "text")."""
        raise NotImplementedError
        yield  # pragma: no cover

    @abstractmethod
    async def verify(self, sequence: Sequence[int], drafts: Sequence[int], decoding: Decoding,
                     *, purpose: str = "verify") -> TargetRows:
        """The target's rows after ``sequence + drafts[:i]`` for i in 0..k."""


class LocalVerifier(Verifier):
    """``backend``: the target's backend when its generation streams token ids — decoding alone
    through it runs the engine's own loop, faster than a scorer call per token."""

    def __init__(self, scorer: TokenScorer, backend: Backend | None = None) -> None:
        self.scorer = scorer
        self.backend = backend
        self.alone_mode = "ids" if backend is not None else "score"

    async def alone(self, sequence: Sequence[int], max_tokens: int, decoding: Decoding,
                    stop: tuple[str, ...]) -> AsyncGenerator[TokenChunk | GenerationDone, None]:
        assert self.backend is not None
        params = SamplingParams(max_tokens=max_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
                                seed=decoding.seed)
        async for event in self.backend.stream_completion(CompletionPrompt(token_ids=list(sequence)), params):
            if isinstance(event, TokenChunk | GenerationDone):
                yield event

    async def verify(self, sequence: Sequence[int], drafts: Sequence[int], decoding: Decoding,
                     *, purpose: str = "verify") -> TargetRows:
        scores = await self.scorer.score_next_tokens([*sequence, *drafts], len(sequence),
                                                     want_logits=not decoding.greedy)
        probs = None if decoding.greedy else sampling_probs(scores.logits, decoding.temperature, decoding.top_p)
        return TargetRows(list(scores.argmax), probs)


class RemoteVerifier(Verifier):
    alone_mode = "text"  # an HTTP stream carries text, not ids: the rest of the answer in one call

    def __init__(self, ctx: RequestContext, backend: str, vocab_size: int, top_k: int) -> None:
        self.ctx = ctx
        self.backend = backend
        self.vocab_size = vocab_size
        self.top_k = top_k

    async def verify(self, sequence: Sequence[int], drafts: Sequence[int], decoding: Decoding,
                     *, purpose: str = "verify") -> TargetRows:
        ids = [*sequence, *drafts, sequence[-1]]  # the last id is the placeholder (any valid id)
        prompt = CompletionPrompt(token_ids=ids, prompt_logprobs=1 if decoding.greedy else self.top_k)
        done: GenerationDone | None = None
        async for event in self.ctx.call_completion(self.backend, prompt, SamplingParams(max_tokens=1, temperature=0.0),
                                                    purpose=purpose):
            if isinstance(event, GenerationDone):
                done = event
        entries = done.prompt_logprobs if done is not None else None
        rows = list(entries[len(sequence) : len(ids)]) if entries is not None and len(entries) == len(ids) else []
        if len(rows) != len(drafts) + 1 or any(row is None or not _scored(row) for row in rows):
            raise UpstreamError(f"speculative target {self.backend!r} returned no usable prompt_logprobs: "
                                "it cannot verify drafts", backend=self.backend, code="speculative_verify_unsupported")
        known = [row for row in rows if row is not None]
        probs = None
        if not decoding.greedy:
            probs = np.stack([self._dense(row, decoding) for row in known])
        assert done is not None
        return TargetRows([_argmax(row) for row in known], probs, done.prompt_tokens)

    def _dense(self, row: TokenLogprob, decoding: Decoding) -> FloatArray:
        known = _known_logprobs(row)
        probs = np.zeros(self.vocab_size, dtype=np.float64)
        for token, p in _tempered(known, decoding.temperature).items():
            if 0 <= token < self.vocab_size:
                probs[token] = p
        if decoding.top_p < 1.0:
            # The nucleus over the known tokens, keeping their total mass (the tail is unknown).
            mass = probs.sum()
            probs = sampling_probs(np.log(np.maximum(probs, 1e-300)), 1.0, decoding.top_p)[0] * mass
        return probs

    async def alone(self, sequence: Sequence[int], max_tokens: int, decoding: Decoding,
                    stop: tuple[str, ...]) -> AsyncGenerator[TokenChunk | GenerationDone, None]:
        """The rest of the answer from the target alone, streamed (recorded as an ``answer`` call)."""
        params = SamplingParams(max_tokens=max_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
                                seed=decoding.seed, stop=stop)
        async for event in self.ctx.call_completion(self.backend, CompletionPrompt(token_ids=list(sequence)), params):
            yield event


def _scored(row: TokenLogprob) -> bool:
    return row.token_id is not None and (row.rank == 1 or any(t.token_id is not None for t in row.top))


def _argmax(row: TokenLogprob) -> int:
    """The rank-1 token: the chosen (prompt) token when it is rank 1, else the first of the top
    list, which the backend orders by rank."""
    if row.rank == 1 and row.token_id is not None:
        return row.token_id
    for top in row.top:
        if top.token_id is not None:
            return top.token_id
    raise UpstreamError("a prompt-logprob entry without token ids", code="speculative_verify_unsupported")


def _known_logprobs(row: TokenLogprob) -> dict[int, float]:
    known = {t.token_id: t.logprob for t in row.top if t.token_id is not None}
    if row.token_id is not None:
        known[row.token_id] = row.logprob
    return known


def _tempered(logprobs: dict[int, float], temperature: float) -> dict[int, float]:
    """Probabilities at ``temperature`` from raw (temperature-1) logprobs of the known tokens.

    Exact at temperature 1. Otherwise the known tokens keep their total mass and share it in
    proportion to ``exp(logprob / T)``: the unknown tail's mass cannot be re-tempered.
    """
    if temperature == 1.0:
        return {t: math.exp(lp) for t, lp in logprobs.items()}
    top = max(logprobs.values())
    weights = {t: math.exp((lp - top) / temperature) for t, lp in logprobs.items()}
    known_mass = min(1.0, sum(math.exp(lp) for lp in logprobs.values()))
    total = sum(weights.values())
    return {t: known_mass * w / total for t, w in weights.items()}
