"""Speculative decoding under a grammar (``response_format``): drafts and target share one
constraint.

Which tokens a grammar allows depends on the committed prefix only, not on the model, so one
:class:`~gateway.core.structured.grammar.Constraint` serves both sides of a round:

* the model drafter draws each draft among the allowed tokens (and the n-gram drafter's
  proposal is cut before its first token the grammar rejects), advancing the constraint
  through its drafts and rolling it back at the end of the proposal;
* the verifier masks each of the target's k + 1 rows with the tokens allowed after the
  sequence and the drafts before it, so the unchanged acceptance rules
  (:mod:`.acceptance`) keep exactly what the target's own constrained decoding would: greedy,
  the masked argmax (the engine's masked draw takes the same lowest-id first maximum);
  sampling, the rejection rule against the masked distribution (exact for any q);
* the generation advances the constraint by every committed token and ends the answer as soon
  as the document is complete.

The target decodes alone one scorer row per token here (``alone_mode = "score"``): its own
generation loop would start a fresh constraint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gateway.core.backend import TokenScorer
from gateway.core.structured.grammar import Constraint
from routers.speculative.acceptance import FloatArray, draw, sampling_probs
from routers.speculative.drafters import Drafter, ModelDrafter, Proposal
from routers.speculative.generation import Decoding, Generation, Round
from routers.speculative.verifiers import LocalVerifier, TargetRows, Verifier

Mask = npt.NDArray[np.bool_]


def prefix_masks(constraint: Constraint, drafts: Sequence[int], eos_ids: frozenset[int]) -> list[Mask]:
    """The allowed tokens after the committed sequence and after each draft prefix (k + 1
    masks), the constraint left where it was. Past a draft the grammar rejects (or an EOS) the
    masks repeat: the verdict rejects at that draft or ends there, so those rows are never read."""
    masks = [constraint.allowed()]
    consumed = 0
    try:
        for token in drafts:
            if token in eos_ids or not masks[-1][token]:
                break
            constraint.advance(token)
            consumed += 1
            masks.append(constraint.allowed())
    finally:
        constraint.rollback(consumed)
    masks += [masks[-1]] * (len(drafts) + 1 - len(masks))
    return masks


def masked(logits: npt.ArrayLike, masks: Sequence[Mask]) -> npt.NDArray[np.float32]:
    rows: npt.NDArray[np.float32] = np.where(np.stack(masks), np.asarray(logits, dtype=np.float32),
                                             np.float32(-np.inf))
    return rows


class ConstrainedGeneration(Generation):
    """The committed sequence, its constraint advanced by every committed token."""

    def __init__(self, prompt_ids: Sequence[int], eos_ids: frozenset[int], decoding: Decoding,
                 constraint: Constraint) -> None:
        super().__init__(prompt_ids, eos_ids, decoding)
        self.constraint = constraint

    def commit(self, new_tokens: Sequence[int]) -> Round:
        step = super().commit(new_tokens)
        for token in step.tokens:
            if not self.constraint.advance(token):  # the masked rows make this a bug, not a model error
                raise RuntimeError(f"committed token {token} breaks the grammar: {self.constraint.error}")
        if step.finish is None and self.constraint.stopped:
            return Round(step.tokens, "stop")  # the document is complete: no pass for an EOS
        return step


class ConstrainedVerifier(Verifier):
    alone_mode = "score"

    def __init__(self, inner: LocalVerifier, constraint: Constraint) -> None:
        self.inner = inner
        self.constraint = constraint

    async def verify(self, sequence: Sequence[int], drafts: Sequence[int], decoding: Decoding,
                     *, purpose: str = "verify") -> TargetRows:
        scorer = self.inner.scorer
        scores = await scorer.score_next_tokens([*sequence, *drafts], len(sequence), want_logits=True)
        rows = masked(scores.logits, prefix_masks(self.constraint, drafts, scorer.eos_token_ids))
        argmax = [int(i) for i in np.argmax(rows, axis=-1)]
        probs = None if decoding.greedy else sampling_probs(rows, decoding.temperature, decoding.top_p)
        return TargetRows(argmax, probs)


class ConstrainedModelDrafter(ModelDrafter):
    """A draft model drawing among the tokens the grammar allows."""

    def __init__(self, name: str, scorer: TokenScorer, constraint: Constraint) -> None:
        super().__init__(name, scorer)
        self.constraint = constraint

    async def propose(self, sequence: Sequence[int], k: int, decoding: Decoding,
                      rng: np.random.Generator) -> Proposal:
        started = time.perf_counter()
        context = list(sequence)
        drafts: list[int] = []
        rows: list[FloatArray] = []
        first_done: float | None = None
        consumed = 0
        try:
            for _ in range(k):
                scores = await self.scorer.score_next_tokens(context, len(context), want_logits=True)
                first_done = first_done or time.perf_counter()
                row = masked(scores.logits[-1:], [self.constraint.allowed()])
                if decoding.greedy:
                    token = int(np.argmax(row[0]))
                else:
                    q = sampling_probs(row, decoding.temperature, decoding.top_p)[0]
                    token = draw(q, rng)
                    rows.append(q)
                drafts.append(token)
                context.append(token)
                if token in self.scorer.eos_token_ids:
                    break
                self.constraint.advance(token)
                consumed += 1
                if self.constraint.stopped:
                    break  # only EOS can follow: the target's row says so
        finally:
            self.constraint.rollback(consumed)
        ended = time.perf_counter()
        step = (ended - first_done) / (len(drafts) - 1) if first_done is not None and len(drafts) > 1 else None
        return Proposal(drafts, np.stack(rows) if rows else None, ended - started, step)


class ConstrainedDrafter(Drafter):
    """Any other drafter (prompt lookup): its proposal cut before the first token the grammar
    rejects, which the target could never keep."""

    def __init__(self, inner: Drafter, constraint: Constraint, eos_ids: frozenset[int]) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.constraint = constraint
        self.eos_ids = eos_ids

    def limit(self, sequence: Sequence[int], max_k: int) -> int:
        return self.inner.limit(sequence, max_k)

    async def propose(self, sequence: Sequence[int], k: int, decoding: Decoding,
                      rng: np.random.Generator) -> Proposal:
        proposal = await self.inner.propose(sequence, k, decoding, rng)
        masks = prefix_masks(self.constraint, proposal.tokens, self.eos_ids)
        keep = next((i for i, t in enumerate(proposal.tokens) if not masks[i][t]), len(proposal.tokens))
        if keep == len(proposal.tokens):
            return proposal
        probs = proposal.probs[:keep] if proposal.probs is not None else None
        return Proposal(proposal.tokens[:keep], probs, proposal.seconds, proposal.step_seconds)
