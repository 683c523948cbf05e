"""Policy configuration of the ``speculative`` strategy (docs/speculative.md).

``draft`` is a tagged choice, told apart by its one key: ``{backend: NAME}`` (a smaller
in-process model with the target's vocabulary) or ``{ngram: {...}}`` (prompt lookup: free
drafts copied from earlier in the prompt and answer). A list of them lets the adaptive
controller pick, each round, the drafter with the best expected speed-up.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from gateway.core.config import StrategyBase, StrictModel


class NgramSettings(StrictModel):
    """Match the sequence's last ``n`` tokens (``max_n`` down to ``min_n``) earlier in the prompt
    and answer; propose up to ``k`` of the tokens that followed that earlier occurrence."""

    max_n: int = Field(3, ge=1, le=16)
    min_n: int = Field(1, ge=1, le=16)
    k: int = Field(8, ge=1, le=32)

    @model_validator(mode="after")
    def _ordered(self) -> NgramSettings:
        if self.min_n > self.max_n:
            raise ValueError("ngram.min_n is larger than ngram.max_n")
        return self


class BackendDraft(StrictModel):
    """Drafts from another in-process backend (same ``vocabulary_id`` as the target)."""

    backend: str = Field(min_length=1)


class NgramDraft(StrictModel):
    """Prompt-lookup drafts: no model, no cost."""

    ngram: NgramSettings = NgramSettings()


def _draft_tag(value: Any) -> str | None:
    keys = set(value) if isinstance(value, dict) else set(type(value).model_fields) if isinstance(
        value, StrictModel) else set()
    if "self_layers" in keys:
        # Kept as a clear message: early-exit drafting was removed (it never paid, see docs).
        return "self_layers"
    if "ngram" in keys:
        return "ngram"
    if "backend" in keys:
        return "backend"
    return None


class _RemovedSelfLayers(StrictModel):
    self_layers: int

    @model_validator(mode="after")
    def _removed(self) -> _RemovedSelfLayers:
        raise ValueError("draft.self_layers was removed (it needed transformers internals and never paid, "
                         "see docs/speculative.md): use {ngram: {}} or {backend: <smaller local model>}")


DraftChoice = Annotated[
    Annotated[BackendDraft, Tag("backend")] | Annotated[NgramDraft, Tag("ngram")]
    | Annotated[_RemovedSelfLayers, Tag("self_layers")],
    Discriminator(_draft_tag, custom_error_type="draft_kind",
                  custom_error_message="a draft is {backend: NAME} or {ngram: {max_n, min_n, k}}"),
]


class AdaptiveSettings(StrictModel):
    """How k and the drafter are chosen (docs/speculative.md, "Adaptive")."""

    # Speculate only when the best expected speed-up is at least this (else the target alone).
    margin: float = Field(1.05, ge=1.0, le=4.0)
    # While the target decodes alone, try one speculative round again after this many tokens
    # (doubled after each probe that still loses, up to 8x; reset when a round pays).
    probe_interval: int = Field(32, ge=1)
    # Weight kept by the acceptance estimate per round (decayed counts; lower adapts faster).
    decay: float = Field(0.9, gt=0.0, lt=1.0)
    # Prior acceptance of a drafter never measured (as decayed counts: 2 kept, 1 rejected).
    prior_acceptance: float = Field(0.67, gt=0.0, lt=1.0)
    # Timed repetitions per measured cost (the minimum is kept: it is the least disturbed).
    calibration_repeats: int = Field(2, ge=1, le=10)


class SpeculativeStrategy(StrategyBase):
    """The draft proposes up to ``max_k`` tokens per round; the target verifies them in one pass.

    ``mode``: ``verify`` (the target scores the drafts: in-process through its TokenScorer, or a
    remote server over ``/v1/completions`` with prompt logprobs), ``predicted`` (the draft's whole
    answer is sent as OpenAI's ``prediction``), ``auto`` (in-process when the target has a
    TokenScorer, remote when it returns prompt logprobs, predicted otherwise). ``adaptive_k:
    false`` keeps ``k`` drafts every round (for experiments; it can be slower than the target).
    """

    type: Literal["speculative"]
    implementation: ClassVar[str] = "routers.speculative.strategy:Speculative"
    target: str = Field(min_length=1)
    draft: list[DraftChoice] = Field(min_length=1)  # one drafter may be written without the list
    k: int = Field(default=4, ge=1, le=32)
    adaptive_k: bool = True
    max_k: int = Field(default=8, ge=1, le=32)
    adaptive: AdaptiveSettings = AdaptiveSettings()
    mode: Literal["auto", "verify", "predicted"] = "auto"
    # Top-K prompt logprobs asked of a remote verifier when sampling (temperature > 0).
    remote_top_logprobs: int = Field(default=20, ge=1, le=20)
    default_max_tokens: int = Field(default=1024, ge=1, description="max_tokens when a request gives none.")

    @field_validator("draft", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return value if isinstance(value, list | tuple) else [value]

    @model_validator(mode="after")
    def _k_in_range(self) -> SpeculativeStrategy:
        if self.k > self.max_k:
            raise ValueError("k is larger than max_k")
        names = self.draft_backends()
        if len(set(names)) != len(names):
            raise ValueError("draft: a backend is listed twice")
        return self

    def drafters(self) -> list[BackendDraft | NgramDraft]:
        return [d for d in self.draft if isinstance(d, BackendDraft | NgramDraft)]

    def draft_backends(self) -> list[str]:
        return [d.backend for d in self.drafters() if isinstance(d, BackendDraft)]

    def referenced_backends(self) -> list[str]:
        return [self.target, *self.draft_backends()]
