"""Policy configuration of the ``rules`` strategy: ordered rules, first match wins
(docs/rules-and-privacy.md)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.core.config import StrategyBase, StrictModel, split_target
from routers.privacy.config import PrivacyPolicy


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


class TokenRange(StrictModel):
    """Inclusive bounds on the prompt's token count."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> TokenRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("prompt_tokens.min is larger than prompt_tokens.max")
        return self


class ValueMatch(StrictModel):
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


class RuleConditions(StrictModel):
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


class Rule(StrictModel):
    name: str = Field(min_length=1)
    when: RuleConditions = RuleConditions()
    # A backend or public model; "backend:NAME" / "model:NAME" when a name is both.
    target: str = Field(min_length=1)


class RulesStrategy(StrategyBase):
    """Ordered rules, first match wins, plus an optional privacy guard applied before them."""

    type: Literal["rules"]
    implementation: ClassVar[str] = "routers.rules.strategy:Rules"

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
        return [t for t in self.targets() if split_target(t)[0] is None]

    def referenced_backends(self) -> list[str]:
        names = [split_target(t)[1] for t in self.targets() if split_target(t)[0] == "backend"]
        if self.privacy is not None and self.privacy.local_backend:
            names.append(self.privacy.local_backend)
        return names

    def referenced_models(self) -> list[str]:
        return [split_target(t)[1] for t in self.targets() if split_target(t)[0] == "model"]
