"""Load a policy YAML file: parse, validate (pydantic), then check every name it refers to.

Problems are reported as ``path.in.file: message`` lines, so ``slm-gateway policy check``
can print them all at once rather than stopping at the first.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies.schema import Policy

DEFAULT_POLICY_NAME = "default.yaml"


class PolicyError(ValueError):
    """A policy file that cannot be used; ``problems`` lists each one with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"invalid policy {source}:\n" + "\n".join(f"  - {p}" for p in problems))
        self.source = source
        self.problems = problems


def default_policy_path() -> Path:
    return Path(str(resources.files("policies").joinpath(DEFAULT_POLICY_NAME)))


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def validation_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        # Discriminated unions add the tag as a path element (models.x.static.backend): keep it,
        # it tells the reader which strategy's schema applied.
        problems.append(f"{_location(item['loc'])}: {item['msg']}")
    return problems


def reference_problems(policy: Policy) -> list[str]:
    """Second pass: every backend and model a strategy names must exist, no delegation cycles."""
    problems: list[str] = []
    if policy.gateway.reference_llm and policy.gateway.reference_llm not in policy.backends:
        problems.append(f"gateway.reference_llm: unknown backend {policy.gateway.reference_llm!r}")
    for public, strategy in policy.models.items():
        for backend in strategy.referenced_backends():
            if backend not in policy.backends:
                problems.append(f"models.{public}: unknown backend {backend!r} (known: {sorted(policy.backends)})")
        for model in strategy.referenced_models():
            if model not in policy.models:
                problems.append(f"models.{public}: unknown model {model!r} (known: {sorted(policy.models)})")
        # Targets that may name either a backend or a model (rules' bare target names).
        for target in strategy.referenced_targets():
            if target not in policy.backends and target not in policy.models:
                problems.append(f"models.{public}: {target!r} is neither a backend nor a model")
    problems.extend(_fallback_problems(policy))
    problems.extend(_cycle_problems(policy))
    return problems


def _fallback_problems(policy: Policy) -> list[str]:
    problems = []
    for public, chain in policy.fallbacks.items():
        if public not in policy.models:
            problems.append(f"fallbacks.{public}: unknown model {public!r} (known: {sorted(policy.models)})")
        for index, target in enumerate(chain):
            if target not in policy.models:
                problems.append(f"fallbacks.{public}[{index}]: unknown model {target!r}")
            elif target == public:
                problems.append(f"fallbacks.{public}[{index}]: a model cannot be its own fallback")
        if len(set(chain)) != len(chain):
            problems.append(f"fallbacks.{public}: lists a model twice")
    return problems


def _cycle_problems(policy: Policy) -> list[str]:
    graph = {name: [m for m in s.referenced_models() if m in policy.models] for name, s in policy.models.items()}
    problems = []
    for start in graph:
        stack, seen = list(graph[start]), set()
        while stack:
            node = stack.pop()
            if node == start:
                problems.append(f"models.{start}: delegates to itself through other models")
                break
            if node not in seen:
                seen.add(node)
                stack.extend(graph[node])
    return problems


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(source, ["(top level): a policy is a YAML mapping"])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, validation_problems(exc)) from None
    problems = reference_problems(policy)
    if problems:
        raise PolicyError(source, problems)
    return policy


def load_policy(path: str | Path | None = None) -> Policy:
    file = Path(path) if path else default_policy_path()
    try:
        text = file.read_text()
    except OSError as exc:
        raise PolicyError(str(file), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(str(file), [f"YAML syntax: {exc}"]) from None
    return anchor_paths(parse_policy(data, str(file)), file.parent)


def anchor_paths(policy: Policy, base: Path) -> Policy:
    """Relative paths in strategy configs (``router_dir``) resolve against the policy file's
    directory, not the process's working directory: the same file works from ``slm-gateway
    serve`` anywhere, a container, or CI. Each config knows its own paths (``anchored``)."""
    models = {name: model.anchored(base) for name, model in policy.models.items()}
    return policy.model_copy(update={"models": models})


def check_policy(path: str | Path) -> list[str]:
    """All problems in a policy file (empty when it is valid)."""
    try:
        load_policy(path)
    except PolicyError as exc:
        return exc.problems
    return []
