"""Strategy registry: the policy's strategy union is the table of routing strategies.

Each member of :data:`policies.schema.StrategyConfig` is one strategy: its ``type`` tag and its
``implementation`` (``"module:Class"``) are read off the config class in
``routers/<strategy>/config.py``, so a strategy is one folder plus one line in that union
(docs/extending.md) — no decorator, no module list. The implementation module is imported the
first time a policy uses it (speculative decoding's torch stays out of processes that need none).

:meth:`StrategyRegistry.check` is what ``slm-gateway policy check`` and ``tests/test_registries.py``
run: every member must resolve to a :class:`Strategy` whose config type is that member, and
every strategy config found under ``routers/`` must be a member.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from typing import Any

from gateway.core.config import StrategyBase
from gateway.core.registry import ImplementationTable, type_tag
from gateway.core.strategy import GatewayResources, Strategy

CONFIG_MODULE = "config"  # routers/<strategy>/config.py


def declared_config(strategy_class: type[Strategy[Any]]) -> type[Any] | None:
    """The config class a strategy declares as ``class X(Strategy[ItsConfig])``, if any."""
    for klass in strategy_class.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is Strategy:
                (argument,) = typing.get_args(base)
                return argument if isinstance(argument, type) else None
    return None


class StrategyRegistry:
    """Routing strategies by ``type`` tag, built from the policy's config union."""

    def __init__(self, union: Any) -> None:
        self.table: ImplementationTable[Strategy[Any]] = ImplementationTable(union, Strategy, "strategy")

    def types(self) -> list[str]:
        return self.table.types()

    def implementation(self, tag: str) -> type[Strategy[Any]]:
        return self.table.implementation(tag)

    def build(self, public_name: str, config: StrategyBase, resources: GatewayResources) -> Strategy[Any]:
        return self.implementation(type_tag(type(config)))(public_name, config, resources)

    def check(self, package: str = "routers") -> list[str]:
        """Problems with the table: a member with no (or the wrong) strategy, a strategy config
        under ``package`` that no member names."""
        problems = self.table.problems()
        for tag in self.types():
            try:
                cls = self.implementation(tag)
            except (ImportError, AttributeError, TypeError, ValueError):
                continue  # reported above
            declared, member = declared_config(cls), self.table.config_class(tag)
            if declared is not member:
                problems.append(
                    f"strategy type {tag!r}: {cls.__module__}.{cls.__qualname__} is a Strategy of "
                    f"{getattr(declared, '__qualname__', declared)}, not of {member.__qualname__}"
                )
        members = set(self.table.configs.values())
        for config in strategy_configs_in(package):
            if config not in members:
                problems.append(
                    f"{config.__module__}.{config.__qualname__} (type {type_tag(config)!r}) is not in "
                    "the policy's StrategyConfig union (policies/schema.py)"
                )
        return problems


def strategy_configs_in(package: str) -> list[type[StrategyBase]]:
    """Strategy config classes (with an ``implementation``) defined in ``<package>.<x>.config``."""
    root = importlib.import_module(package)
    found: list[type[StrategyBase]] = []
    for info in pkgutil.iter_modules(getattr(root, "__path__", [])):
        if not info.ispkg:
            continue
        name = f"{package}.{info.name}.{CONFIG_MODULE}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a package with no config module (privacy, shared helpers)
            raise
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, StrategyBase) and value.__module__ == name
                    and isinstance(getattr(value, "implementation", None), str)):
                found.append(value)
    return found
