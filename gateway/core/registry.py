"""A table of implementations read off a discriminated union of config classes.

Backends and strategies are registered the same way: each config class (in its own folder)
declares ``type: Literal["<tag>"]`` and ``implementation: ClassVar[str] = "module:Class"``, and
the policy schema unites those classes in one ``Annotated[A | B | ..., Field(discriminator="type")]``.
:class:`ImplementationTable` turns that union into ``tag -> class``, so the tag is written once
(on the config) and nothing else lists the kinds. Implementation modules are imported on first
use only: a process whose policy needs no in-process model never imports torch.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def config_classes(union: Any) -> list[type[Any]]:
    """The member classes of a union, or of an ``Annotated`` discriminated union."""
    members = typing.get_args(union)
    inner = members[0] if members and typing.get_origin(union) is typing.Annotated else union
    return [cls for cls in typing.get_args(inner) or (inner,) if isinstance(cls, type)]


def type_tag(config_class: type[Any]) -> str:
    """The ``type`` literal a config class declares (the one place its tag is written)."""
    fields = getattr(config_class, "model_fields", {})
    if "type" not in fields:
        raise TypeError(f"{config_class.__qualname__} declares no `type` field")
    tags = typing.get_args(fields["type"].annotation)
    if len(tags) != 1 or not isinstance(tags[0], str):
        raise TypeError(f"{config_class.__qualname__}.type must be Literal['<one tag>'], not {tags!r}")
    return tags[0]


def import_target(target: str) -> Any:
    """The object a ``"package.module:Name"`` string names."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"implementation {target!r} is not 'module:Name'")
    return getattr(importlib.import_module(module_name), attribute)


class ImplementationTable(Generic[T]):
    """``tag -> config class -> implementation class`` for one union (``what`` names the kind)."""

    def __init__(self, union: Any, base: type[Any], what: str) -> None:
        self.base = base  # an ABC (Backend, Strategy): typed loosely, mypy refuses abstract type[T]
        self.what = what
        self.configs: dict[str, type[Any]] = {}
        for cls in config_classes(union):
            tag = type_tag(cls)
            if tag in self.configs:
                raise ValueError(f"{what} type {tag!r} is declared by {self.configs[tag].__qualname__} "
                                 f"and {cls.__qualname__}")
            self.configs[tag] = cls

    def types(self) -> list[str]:
        return sorted(self.configs)

    def config_class(self, tag: str) -> type[Any]:
        try:
            return self.configs[tag]
        except KeyError:
            raise KeyError(f"no {self.what} type {tag!r} (known: {', '.join(self.types())})") from None

    def implementation(self, tag: str) -> type[T]:
        """The class a tag's config names, imported now; TypeError when it is not a ``base``."""
        config = self.config_class(tag)
        target = getattr(config, "implementation", None)
        if not isinstance(target, str):
            raise TypeError(f"{config.__qualname__} ({self.what} type {tag!r}) declares no `implementation`")
        cls = import_target(target)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{target} ({self.what} type {tag!r}) is not a {self.base.__name__}")
        implementation: type[T] = cls
        return implementation

    def problems(self) -> list[str]:
        """Every member whose implementation does not import or is not a ``base``."""
        found = []
        for tag in self.types():
            try:
                self.implementation(tag)
            except (ImportError, AttributeError, TypeError, ValueError) as exc:
                found.append(f"{self.what} type {tag!r}: {exc}")
        return found
