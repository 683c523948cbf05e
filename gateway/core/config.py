"""Configuration types shared by every layer: the strict base model, prices, the backend
reliability settings, and the base of every strategy configuration.

They sit in the bottom layer so a backend's or a strategy's own config (in its folder) and
the policy schema that unites them can all use them without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field


class StrategyBase(BaseModel):
    """What every strategy's config has. A subclass (in ``routers/<strategy>/config.py``) sets
    ``type: Literal["<tag>"]`` and ``implementation``, the ``"module:Class"`` of the strategy it
    configures; the strategy registry reads both off the policy's union (docs/extending.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    implementation: ClassVar[str]

    def referenced_backends(self) -> list[str]:
        """Backend names this strategy calls directly."""
        return []

    def billed_backends(self) -> list[str]:
        """The backends a client's request may be billed for: all it calls directly, unless some
        run only on the gateway's own account (a cascade's self-calibration judges)."""
        return self.referenced_backends()

    def referenced_models(self) -> list[str]:
        """Other public models (strategies) this strategy delegates to."""
        return []

    def referenced_targets(self) -> list[str]:
        """Bare names that must be a backend *or* a model (resolved when the strategy starts)."""
        return []

    def anchored(self, base: Path) -> Self:
        """This config with relative file paths resolved against ``base`` (the policy's folder)."""
        return self


def split_target(target: str) -> tuple[str | None, str]:
    """A delegation target ``NAME`` / ``backend:NAME`` / ``model:NAME`` as ``(kind, name)``;
    kind None means "resolved at start, backend first" (rules, learned)."""
    kind, sep, name = target.partition(":")
    if sep and kind in ("backend", "model"):
        return kind, name
    return None, target


def anchored_path(path: str, base: Path) -> str:
    """``path`` with ``~`` expanded and, when relative, joined to ``base``."""
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else base / expanded)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(StrictModel):
    """USD per one million tokens."""

    input_per_1m: float = Field(0.0, ge=0)
    output_per_1m: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


class Timeouts(StrictModel):
    """Per-backend timeouts in seconds (see docs/reliability.md for the defaults' rationale)."""

    connect: float = Field(5.0, gt=0)
    first_token: float = Field(60.0, gt=0)
    total: float = Field(300.0, gt=0)
    idle: float = Field(60.0, gt=0)


class RetryPolicy(StrictModel):
    """Retries of one upstream call, only before its first token (docs/reliability.md).

    ``max_attempts`` counts the first try. Backoff is exponential with full jitter:
    attempt n waits uniform(0, min(max_backoff_s, initial_backoff_s * 2**(n-1))), and every
    attempt and wait must fit in the call's ``first_token`` (and, non-streamed, ``total``) budget.
    """

    max_attempts: int = Field(2, ge=1, le=10)
    initial_backoff_s: float = Field(0.1, ge=0)
    max_backoff_s: float = Field(2.0, ge=0)


class CircuitBreakerPolicy(StrictModel):
    """Per-backend circuit breaker: open after ``failure_threshold`` consecutive upstream
    failures, or when the error rate over the last ``window`` calls reaches ``error_rate``;
    after ``cooldown_s`` one probe call is let through (half-open)."""

    failure_threshold: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window: int = Field(20, ge=2)
    cooldown_s: float = Field(10.0, gt=0)


class SamplingDefaults(StrictModel):
    """What a backend's model samples with when the client sets nothing (docs/api.md).

    OpenAI's defaults (temperature 1, top_p 1) suit large models; a small one such as
    SmolLM2-135M rambles at temperature 1, and its card recommends 0.2 / 0.9. Like vLLM's
    use of a model's generation config, these apply only to parameters the request omits
    (or sends as null); an HTTP upstream is sent only what the client or these set.
    """

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class BackendConfigBase(StrictModel):
    """What every backend kind's config has. A subclass sets ``type: Literal["<tag>"]`` and
    ``implementation``, the ``"module:Class"`` of the backend it configures; the backend
    registry reads both, so the tag is written once and the module is imported only when a
    policy uses it (an in-process engine's heavy imports stay out of processes that need none).
    """

    implementation: ClassVar[str]
    # Settings that only the reliability wrapper applies: changing them on reload keeps the
    # loaded model / connection pool (an HTTP client also reads ``timeouts``, so not here).
    wrapper_settings: ClassVar[frozenset[str]] = frozenset({"retry", "circuit_breaker"})

    price: Price = Price()
    context_length: int = Field(8192, ge=16)
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    defaults: SamplingDefaults = SamplingDefaults()

    def with_process_threads(self, threads: int | None) -> Self:
        """This config with the process-wide thread setting (``SLM_GATEWAY_THREADS``) applied;
        a kind that runs a model in-process fills in its own unset ``threads``, others ignore it."""
        return self

    def max_output_tokens(self) -> int:
        """The most tokens one answer can take when the request sets no ``max_tokens`` (what a
        key's budget reserves): a remote upstream may write up to its context length; a kind
        with its own default (an in-process engine) overrides this."""
        return self.context_length
