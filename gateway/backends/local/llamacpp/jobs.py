"""What one admitted request is doing inside the llama.cpp engine, step by step.

A job first *prefills* (its uncached prompt tokens, fed in chunks mixed into the decode
steps), then — for a generation — *decodes* one token per step. Each job says which of its
positions need logits and consumes those rows after the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.backends.local.engine import (
    ConstraintError,
    EngineFinished,
    GeneratedToken,
    GenerateRequest,
    PromptScores,
    ScoreRequest,
)
from gateway.backends.local.llamacpp.slots import Slot
from gateway.backends.local.sampling import PromptScore, prompt_token_scores
from gateway.core.backend import NextTokenScores
from gateway.core.errors import UpstreamError

Logits = npt.NDArray[np.float32]


@dataclass(slots=True)
class Job:
    slot: Slot
    feed: list[int]  # prompt tokens not yet in the KV cache

    @property
    def cancelled(self) -> bool:
        raise NotImplementedError

    @property
    def prefilling(self) -> bool:
        return bool(self.feed)

    def wants_logits(self, position: int) -> bool:
        raise NotImplementedError

    def take_prefill_row(self, position: int, logits: Logits) -> bool:
        """Consume the logits at ``position`` of the prompt; True when the job is finished."""
        raise NotImplementedError

    def finish_cancelled(self) -> None:
        raise NotImplementedError

    def fail(self, message: str) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class GenerateJob(Job):
    request: GenerateRequest
    is_eos: Callable[[int], bool]
    next_token: int | None = None  # sampled, not yet fed (the decode phase)
    # Scores of prompt tokens 1.. so far (those of a reused prefix come from the slot's cache).
    prompt_scores: list[PromptScore] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled

    @property
    def prompt_length(self) -> int:
        return len(self.request.prompt_ids)

    def wants_logits(self, position: int) -> bool:
        if self.request.prompt_logprobs is not None:
            return True  # every prompt position scores the next prompt token
        return position == self.prompt_length - 1

    def take_prefill_row(self, position: int, logits: Logits) -> bool:
        request = self.request
        if position < self.prompt_length - 1:
            (score,) = prompt_token_scores(logits[None, :], [request.prompt_ids[position + 1]],
                                           request.prompt_logprobs or 0)
            self.prompt_scores.append(score)
            return False
        if request.prompt_logprobs is not None:
            # The slot keeps them: a later request sharing this prompt's start reuses them.
            self.slot.scores, self.slot.scores_top = [None, *self.prompt_scores], request.prompt_logprobs
            request.emit(PromptScores(list(self.slot.scores)))
        if request.max_new_tokens == 0:
            request.emit(EngineFinished("length", self.prompt_length, 0))
            return True
        return self.take_decode_row(logits)

    def take_decode_row(self, logits: Logits) -> bool:
        """Sample the next token from the raw logits; True when the job is finished."""
        request = self.request
        if request.grammar_complete:
            request.emit(EngineFinished("stop", self.prompt_length, request.generated))
            return True
        try:
            draw = request.draw(logits)
        except ConstraintError as exc:
            request.emit(EngineFinished("constraint", self.prompt_length, request.generated, str(exc)))
            return True
        request.generated += 1
        if self.is_eos(draw.token_id):
            request.emit(EngineFinished("stop", self.prompt_length, request.generated - 1))
            return True
        request.emit(GeneratedToken(draw.token_id, draw.logprob, draw.top))
        if request.generated >= request.max_new_tokens:
            request.emit(EngineFinished("length", self.prompt_length, request.generated))
            return True
        if request.grammar_complete:  # the document just closed: no decode step for an EOS
            request.emit(EngineFinished("stop", self.prompt_length, request.generated))
            return True
        self.next_token = draw.token_id
        return False

    def finish_cancelled(self) -> None:
        self.request.emit(EngineFinished("cancelled", self.prompt_length, self.request.generated))

    def fail(self, message: str) -> None:
        self.request.emit(EngineFinished("error", self.prompt_length, self.request.generated, message))


@dataclass(slots=True)
class ScoreJob(Job):
    request: ScoreRequest
    argmax: list[int] = field(default_factory=list)
    rows: list[Logits] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled or self.request.result.done()

    def wants_logits(self, position: int) -> bool:
        return position >= self.request.start - 1

    def take_prefill_row(self, position: int, logits: Logits) -> bool:
        self.argmax.append(int(np.argmax(logits)))
        if self.request.want_logits:
            self.rows.append(logits)
        if position < len(self.request.token_ids) - 1:
            return False
        stacked = np.stack(self.rows).astype(np.float32, copy=False) if self.request.want_logits else None
        self.request.resolve(NextTokenScores(argmax=tuple(self.argmax), logits=stacked))
        return True

    def finish_cancelled(self) -> None:
        return None  # the awaiting coroutine is gone: its future was cancelled with it

    def fail(self, message: str) -> None:
        self.request.fail(UpstreamError(f"local scoring failed: {message}"))
