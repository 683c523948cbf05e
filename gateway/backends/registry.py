"""Backend registry: the policy's backend union is the table of backend kinds.

Each member of :data:`policies.schema.BackendConfig` is one kind: its ``type`` tag and its
``implementation`` (``"module:Class"``) are read off the config class, so adding a kind is a
folder under ``gateway/backends/`` plus one line in that union (docs/extending.md). The
implementation module is imported on first use only.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from typing import Any, cast

from gateway.core.backend import Backend
from gateway.core.config import BackendConfigBase


def config_classes(union: Any) -> list[type[BackendConfigBase]]:
    """The config classes of a discriminated union (``Annotated[A | B, Field(...)]``)."""
    members = typing.get_args(union)
    inner = members[0] if members and typing.get_origin(union) is typing.Annotated else union
    return [cls for cls in typing.get_args(inner) or (inner,) if isinstance(cls, type)]


def type_tag(config_class: type[BackendConfigBase]) -> str:
    """The ``type`` literal a config class declares (the one place the tag is written)."""
    annotation = config_class.model_fields["type"].annotation
    (tag,) = typing.get_args(annotation)
    return str(tag)


class BackendRegistry:
    """Backend kinds by ``type`` tag, built from the policy's config union."""

    def __init__(self, union: Any) -> None:
        self._configs = {type_tag(cls): cls for cls in config_classes(union)}

    def types(self) -> list[str]:
        return sorted(self._configs)

    def implementation(self, type_tag_: str) -> Callable[[str, Any], Backend]:
        """The backend class of a kind: built as ``cls(name, config)``."""
        try:
            target = self._configs[type_tag_].implementation
        except KeyError:
            raise KeyError(f"no backend kind registered for type {type_tag_!r}") from None
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"{target} (backend type {type_tag_!r}) is not a Backend")
        return cast(Callable[[str, Any], Backend], cls)

    def build(self, name: str, config: BackendConfigBase) -> Backend:
        tag = type_tag(type(config))
        return self.implementation(tag)(name, config)

    def check(self) -> list[str]:
        """Problems with the table itself (every kind resolves to a Backend class)."""
        problems = []
        for tag in self.types():
            try:
                self.implementation(tag)
            except (ImportError, AttributeError, TypeError) as exc:
                problems.append(f"backend type {tag!r}: {exc}")
        return problems
