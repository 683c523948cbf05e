"""In-process speculative decoding over transformers models: one request, one round at a time.

The target keeps one KV cache for the whole request: each round feeds it the last committed
token plus the k drafts in *one* forward pass, and rejected positions are cropped away
(``DynamicCache.crop``), so nothing is recomputed between rounds. The draft keeps its own
cache the same way. :meth:`Speculator.step` is synchronous and CPU-bound: the strategy runs
it in a worker thread, one round per call, and streams each round's tokens as they come.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from routers.speculative.acceptance import (
    DraftLength,
    Verdict,
    greedy_verdict,
    rejection_verdict,
    sampling_probs,
)
from routers.speculative.forward import CausalLM


@dataclass(slots=True)
class SpeculationStats:
    """Per-request accounting (``record.extra["speculative"]``)."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    target_passes: int = 0  # verification passes (forward passes or remote calls), prefill excluded
    target_prompt_tokens: int = 0  # remote: prompt tokens billed over all verification calls
    draft_passes: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    k_history: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["acceptance_rate"] = round(self.accepted / self.drafted, 4) if self.drafted else None
        out["target_passes_per_token"] = round(self.target_passes / self.emitted, 4) if self.emitted else None
        out["draft_seconds"] = round(self.draft_seconds, 4)
        out["verify_seconds"] = round(self.verify_seconds, 4)
        return out


@dataclass(frozen=True, slots=True)
class Round:
    tokens: list[int]  # verified tokens to emit (EOS excluded)
    finish: str | None  # "stop" | "length" | None (more rounds to come)


@dataclass(frozen=True, slots=True)
class Decoding:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Drafter:
    """The draft model's side of a request: its KV cache and how much of the sequence it holds."""

    def __init__(self, draft: CausalLM, decoding: Decoding, generator: torch.Generator | None) -> None:
        self.draft = draft
        self.decoding = decoding
        self.generator = generator
        self.cache = draft.new_cache()
        self.held = 0  # tokens of the sequence in the cache
        self.passes = 0

    def prefill(self, context: list[int]) -> None:
        with torch.inference_mode():
            if context:
                self.draft.logits(context, self.cache, last_only=True)
        self.held = len(context)

    def propose(self, sequence: list[int], k: int) -> tuple[list[int], torch.Tensor | None]:
        """k draft tokens after ``sequence`` (and, when sampling, the (k, V) q they came from)."""
        pending = sequence[self.held :]
        drafts: list[int] = []
        rows: list[torch.Tensor] = []
        with torch.inference_mode():
            for _ in range(k):
                logits = self.draft.logits(pending, self.cache, last_only=True)[-1]
                self.passes += 1
                if self.decoding.greedy:
                    token = int(torch.argmax(logits))
                else:
                    q = sampling_probs(logits, self.decoding.temperature, self.decoding.top_p)
                    token = int(torch.multinomial(q, 1, generator=self.generator))
                    rows.append(q)
                drafts.append(token)
                pending = [token]
        self.held = len(sequence) + k - 1  # the last draft was never fed
        return drafts, (torch.stack(rows) if rows else None)

    def rollback(self, committed: int) -> None:
        """Keep only the first ``committed`` tokens of the (new) sequence."""
        self.held = min(self.held, committed)
        crop_to(self.cache, self.held)


class Generation:
    """The committed sequence and the per-request statistics, shared by every verifier."""

    def __init__(self, prompt_ids: list[int], eos_ids: set[int], decoding: Decoding, lengths: DraftLength) -> None:
        if not prompt_ids:
            raise ValueError("prompt must not be empty")
        self.sequence = list(prompt_ids)
        self.prompt_tokens = len(prompt_ids)
        self.eos_ids = eos_ids
        self.decoding = decoding
        self.lengths = lengths
        self.stats = SpeculationStats()
        self.generator = torch.Generator().manual_seed(decoding.seed) if decoding.seed is not None else None

    @property
    def generated(self) -> int:
        return len(self.sequence) - self.prompt_tokens

    def next_k(self) -> int:
        """Drafts for the next round (0: the length limit is reached)."""
        remaining = self.decoding.max_new_tokens - self.generated
        return self.lengths.next(remaining) if remaining > 0 else 0

    def account(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        stats = self.stats
        stats.rounds += 1
        stats.drafted += k
        stats.accepted += accepted
        stats.target_passes += 1
        stats.draft_passes += k
        stats.draft_seconds += draft_seconds
        stats.verify_seconds += verify_seconds
        stats.k_history.append(k)
        self.lengths.observe(k, accepted, draft_seconds, verify_seconds)

    def commit(self, new_tokens: list[int]) -> Round:
        """Append verified tokens up to EOS (excluded) or the length limit."""
        emitted: list[int] = []
        finish: str | None = None
        for token in new_tokens:
            if token in self.eos_ids:
                finish = "stop"
                break
            emitted.append(token)
            if self.generated + len(emitted) >= self.decoding.max_new_tokens:
                finish = "length"
                break
        self.sequence.extend(emitted)
        self.stats.emitted += len(emitted)
        return Round(emitted, finish)


class Speculator(Generation):
    """Speculative generation of one request with in-process draft and target."""

    def __init__(
        self, target: CausalLM, draft: CausalLM, prompt_ids: list[int], eos_ids: set[int],
        decoding: Decoding, lengths: DraftLength,
    ) -> None:
        super().__init__(prompt_ids, eos_ids, decoding, lengths)
        self.target = target
        self.drafter = Drafter(draft, decoding, self.generator)
        self._target_cache = target.new_cache()
        self._prefilled = False

    def prefill(self) -> None:
        """Both caches take the prompt but its last token (each round starts by feeding that)."""
        context = self.sequence[:-1]
        with torch.inference_mode():
            if context:
                self.target.logits(context, self._target_cache, last_only=True)
        self.drafter.prefill(context)
        self._prefilled = True

    def step(self) -> Round:
        if not self._prefilled:
            self.prefill()
        k = self.next_k()
        if k == 0:
            return Round([], "length")
        started = time.perf_counter()
        drafts, draft_probs = self.drafter.propose(self.sequence, k)
        drafted_at = time.perf_counter()
        with torch.inference_mode():
            verdict = self._verify(drafts, draft_probs)
        self.account(k, verdict.accepted, drafted_at - started, time.perf_counter() - drafted_at)
        before = len(self.sequence)
        # The target cache held sequence[:-1] and took sequence[-1] plus the k drafts: keep the
        # last committed token and the accepted drafts (the new token is fed next round).
        crop_to(self._target_cache, before + verdict.accepted)
        self.drafter.rollback(before + verdict.accepted)
        return self.commit([*drafts[: verdict.accepted], verdict.next_token])

    def _verify(self, drafts: list[int], draft_probs: torch.Tensor | None) -> Verdict:
        logits = self.target.logits([self.sequence[-1], *drafts], self._target_cache)
        if draft_probs is None:
            return greedy_verdict(drafts, torch.argmax(logits, dim=-1).tolist())
        p = sampling_probs(logits, self.decoding.temperature, self.decoding.top_p)
        return rejection_verdict(drafts, draft_probs, p, self.generator)


def crop_to(cache: Any, length: int) -> None:
    """Drop cached positions from ``length`` on (transformers 5 crops by a negative count)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def target_greedy(target: CausalLM, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    """Reference: the target alone, greedy, one token per forward pass with a KV cache."""
    cache = target.new_cache()
    out: list[int] = []
    with torch.inference_mode():
        logits = target.logits(prompt_ids, cache, last_only=True)[-1]
        while len(out) < max_new_tokens:
            token = int(torch.argmax(logits))
            if token in eos_ids:
                break
            out.append(token)
            logits = target.logits([token], cache, last_only=True)[-1]
    return out
