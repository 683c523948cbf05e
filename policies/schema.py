"""Policy schema: what a policy YAML file may contain.

A policy declares *backends* (where tokens come from: an in-process model or an
OpenAI-compatible server) and public *models* (what clients ask for), each bound to one
routing strategy chosen by its ``type`` tag. Unknown keys are rejected everywhere
(``extra="forbid"``); secrets are referenced by environment-variable name, never stored.

Each backend kind's configuration lives in its own folder (``gateway/backends/<kind>/config.py``)
and each strategy's in its own (``routers/<strategy>/config.py``); this module unites them in
one document. The two unions below are also the registries' tables: a config class's
``type`` tag and ``implementation`` are read off it (``gateway/backends/registry.py``,
``routers/registry.py``), so adding a kind is its folder plus one line here (docs/extending.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.backends.echo.config import EchoBackend
from gateway.backends.embedding.config import EmbeddingBackend
from gateway.backends.local.config import LocalBackend
from gateway.backends.openai.config import OpenAIBackend
from gateway.core.config import StrictModel
from routers.cascade.config import CascadeStrategy
from routers.learned.config import LearnedStrategy
from routers.rules.config import RulesStrategy
from routers.speculative.config import SpeculativeStrategy
from routers.static.config import StaticStrategy

BackendConfig = Annotated[
    LocalBackend
    | OpenAIBackend
    | EchoBackend
    | EmbeddingBackend,
    Field(discriminator="type"),
]

StrategyConfig = Annotated[
    StaticStrategy
    | RulesStrategy
    | LearnedStrategy
    | CascadeStrategy
    | SpeculativeStrategy,
    Field(discriminator="type"),
]


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
