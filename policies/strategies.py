"""Strategy configurations: one pydantic model per routing strategy, chosen by ``type``.

Each routing strategy in :mod:`routers` has exactly one config model here; the
discriminated union :data:`StrategyConfig` is what a public model in a policy maps to.
``referenced_backends`` / ``referenced_models`` let the loader's second pass check that
every name a strategy refers to exists.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.config import StrategyBase


class StaticStrategy(StrategyBase):
    """Always answer from one backend."""

    type: Literal["static"]
    backend: str

    def referenced_backends(self) -> list[str]:
        return [self.backend]


# --- rules (routers/rules, docs/rules-and-privacy.md) ------------------------------------

PrivacyDetector = Literal["email", "phone", "payment_card", "iban", "national_id", "secret"]
PrivacyAction = Literal["local_only", "redact", "block"]


class RulePart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


class TokenRange(RulePart):
    """Inclusive bounds on the prompt's token count."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> TokenRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("prompt_tokens.min is larger than prompt_tokens.max")
        return self


class ValueMatch(RulePart):
    """Exactly one of ``equals`` / ``regex`` (a regex must match the whole value)."""

    equals: str | None = None
    regex: str | None = None

    _regex_ok = field_validator("regex")(_check_regex)

    @model_validator(mode="after")
    def _one(self) -> ValueMatch:
        if (self.equals is None) == (self.regex is None):
            raise ValueError("give exactly one of equals / regex")
        return self


class HeaderMatch(ValueMatch):
    name: str

    @field_validator("name")
    @classmethod
    def _lower(cls, name: str) -> str:
        return name.lower()


class RuleConditions(RulePart):
    """All conditions given must hold; an empty ``when`` always matches."""

    prompt_tokens: TokenRange | None = None
    regex: str | None = None
    keywords: tuple[str, ...] | None = Field(default=None, min_length=1)
    on: Literal["last_user", "system"] = "last_user"
    has_tools: bool | None = None
    has_response_format: bool | None = None
    user: str | ValueMatch | None = None
    header: HeaderMatch | None = None
    key_tags: tuple[str, ...] | None = Field(default=None, min_length=1)
    sensitive: bool | None = None

    _regex_ok = field_validator("regex")(_check_regex)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean True.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data


class Rule(RulePart):
    name: str = Field(min_length=1)
    when: RuleConditions = RuleConditions()
    # A backend or public model; "backend:NAME" / "model:NAME" when a name is both.
    target: str = Field(min_length=1)


class PrivacyPolicy(RulePart):
    """What to do when a detector fires anywhere in the request (see docs/rules-and-privacy.md)."""

    detectors: tuple[PrivacyDetector, ...] = (
        "email", "phone", "payment_card", "iban", "national_id", "secret",
    )
    action: PrivacyAction = "local_only"
    per_detector: dict[PrivacyDetector, PrivacyAction] = Field(default_factory=dict)
    # Backend that local_only reroutes to (default: the first local, ready backend).
    local_backend: str | None = None


def split_target(target: str) -> tuple[str | None, str]:
    """``("backend" | "model" | None, name)``: None means resolved at start (backend first)."""
    kind, sep, name = target.partition(":")
    if sep and kind in ("backend", "model"):
        return kind, name
    return None, target


class RulesStrategy(StrategyBase):
    """Ordered rules, first match wins, plus an optional privacy guard applied before them."""

    type: Literal["rules"]
    rules: tuple[Rule, ...] = ()
    default: str
    privacy: PrivacyPolicy | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> RulesStrategy:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {duplicates}")
        return self

    def targets(self) -> list[str]:
        return [rule.target for rule in self.rules] + [self.default]

    def referenced_targets(self) -> list[str]:
        """Bare names that must be a backend *or* a model (the strategy checks them at start)."""
        return [t for t in self.targets() if split_target(t)[0] is None]

    def referenced_backends(self) -> list[str]:
        names = [split_target(t)[1] for t in self.targets() if split_target(t)[0] == "backend"]
        if self.privacy is not None and self.privacy.local_backend:
            names.append(self.privacy.local_backend)
        return names

    def referenced_models(self) -> list[str]:
        return [split_target(t)[1] for t in self.targets() if split_target(t)[0] == "model"]


# --- learned (routers/learned, docs/learned-router.md) -----------------------------------


class LearnedStrategy(StrategyBase):
    """Pre-call learned router: score the request, ``strong`` if score >= threshold else ``weak``.

    ``weak`` / ``strong`` are a backend or a public model; bare names resolve to a backend
    first, then a model; write ``backend:NAME`` / ``model:NAME`` to say which (as in ``rules``).
    """

    type: Literal["learned"]
    router_dir: str = Field(min_length=1)  # written by `slm-gateway router train --out`
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)  # None: the router's calibrated one
    embed: Literal["last_user", "conversation"] = "last_user"
    weak: str = Field(min_length=1)
    strong: str = Field(min_length=1)

    def targets(self) -> list[str]:
        return [self.weak, self.strong]

    def referenced_targets(self) -> list[str]:
        return [t for t in self.targets() if split_target(t)[0] is None]

    def referenced_backends(self) -> list[str]:
        return [split_target(t)[1] for t in self.targets() if split_target(t)[0] == "backend"]

    def referenced_models(self) -> list[str]:
        return [split_target(t)[1] for t in self.targets() if split_target(t)[0] == "model"]


# --- speculative (routers/speculative, docs/speculative.md) ------------------------------


class SpeculativeDraft(RulePart):
    """Where draft tokens come from: another local backend, or the target's own first N layers."""

    backend: str | None = None
    self_layers: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> SpeculativeDraft:
        if (self.backend is None) == (self.self_layers is None):
            raise ValueError("give exactly one of draft.backend / draft.self_layers")
        return self


class SpeculativeStrategy(StrategyBase):
    """The draft proposes ``k`` tokens per round; the target verifies them (see docs/speculative.md).

    ``mode``: ``verify`` (the target scores the drafts: in-process, or over ``/v1/completions``
    with prompt logprobs), ``predicted`` (the draft's whole answer is sent as OpenAI's
    ``prediction``), ``auto`` (verify for local targets and those that continue a prefix,
    predicted otherwise).
    """

    type: Literal["speculative"]
    target: str = Field(min_length=1)
    draft: SpeculativeDraft
    k: int = Field(default=4, ge=1, le=32)
    adaptive_k: bool = True
    max_k: int = Field(default=8, ge=1, le=32)
    mode: Literal["auto", "verify", "predicted"] = "auto"
    # Top-K prompt logprobs asked of a remote verifier when sampling (temperature > 0).
    remote_top_logprobs: int = Field(default=20, ge=1, le=20)

    def referenced_backends(self) -> list[str]:
        return [self.target] + ([self.draft.backend] if self.draft.backend else [])


from policies.cascade import CascadeStrategy  # noqa: E402 - one module per larger strategy config

StrategyConfig = Annotated[
    StaticStrategy | RulesStrategy | LearnedStrategy | CascadeStrategy | SpeculativeStrategy,
    Field(discriminator="type"),
]
