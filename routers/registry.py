"""Strategy registry: routing strategies register themselves under their policy ``type`` tag.

Registration happens when a strategy module is imported; :func:`load_builtin_strategies`
imports the built-in ones explicitly (no work at package import time).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gateway.core.strategy import Strategy

StrategyClass = TypeVar("StrategyClass", bound="type[Strategy[Any]]")

BUILTIN_STRATEGY_MODULES: tuple[str, ...] = (
    "routers.static",
    "routers.rules.strategy",
    "routers.learned.strategy",
    "routers.cascade.strategy",
    "routers.speculative.strategy",
)


class StrategyRegistry:
    def __init__(self) -> None:
        self._by_type: dict[str, type[Strategy[Any]]] = {}

    def register(self, type_tag: str) -> Callable[[StrategyClass], StrategyClass]:
        def decorate(cls: StrategyClass) -> StrategyClass:
            existing = self._by_type.get(type_tag)
            if existing is not None and existing is not cls:
                raise ValueError(f"strategy type {type_tag!r} registered twice")
            self._by_type[type_tag] = cls
            return cls

        return decorate

    def get(self, type_tag: str) -> type[Strategy[Any]]:
        try:
            return self._by_type[type_tag]
        except KeyError:
            raise KeyError(f"no routing strategy registered for type {type_tag!r}") from None

    def types(self) -> list[str]:
        return sorted(self._by_type)


# The registry is a process-wide table of *classes* (like a plugin entry-point table); it
# holds no request state.
STRATEGIES = StrategyRegistry()
register_strategy = STRATEGIES.register


def load_builtin_strategies() -> StrategyRegistry:
    for module in BUILTIN_STRATEGY_MODULES:
        importlib.import_module(module)
    return STRATEGIES
