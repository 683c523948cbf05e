"""Policy schema: what a policy YAML file may contain.

A policy declares *backends* (where tokens come from: an in-process model or an
OpenAI-compatible server) and public *models* (what clients ask for), each bound to one
routing strategy chosen by its ``type`` tag. Unknown keys are rejected everywhere
(``extra="forbid"``); secrets are referenced by environment-variable name, never stored.

Each backend kind's configuration lives in its own folder (``gateway/backends/<kind>/config.py``)
and each strategy's in :mod:`policies.strategies`; this module unites them in one document.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.backends.local.config import LocalBackend
from gateway.backends.openai.config import OpenAIBackend
from gateway.core.config import StrictModel
from policies.strategies import StrategyConfig

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
