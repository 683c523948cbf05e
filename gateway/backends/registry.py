"""Backend registry: the policy's backend union is the table of backend kinds.

Each member of :data:`policies.schema.BackendConfig` is one kind: its ``type`` tag and its
``implementation`` (``"module:Class"``) are read off the config class
(:class:`gateway.core.registry.ImplementationTable`), so adding a kind is a folder under
``gateway/backends/`` plus one line in that union (docs/extending.md). The implementation
module is imported on first use only.
"""

from __future__ import annotations

from typing import Any

from gateway.core.backend import Backend
from gateway.core.config import BackendConfigBase
from gateway.core.registry import ImplementationTable, type_tag


class BackendRegistry:
    """Backend kinds by ``type`` tag, built from the policy's config union."""

    def __init__(self, union: Any) -> None:
        self.table: ImplementationTable[Backend] = ImplementationTable(union, Backend, "backend")

    def types(self) -> list[str]:
        return self.table.types()

    def implementation(self, tag: str) -> type[Backend]:
        """The backend class of a kind: built as ``cls(name, config)``."""
        return self.table.implementation(tag)

    def build(self, name: str, config: BackendConfigBase) -> Backend:
        cls: Any = self.implementation(type_tag(type(config)))
        backend: Backend = cls(name, config)
        return backend

    def check(self) -> list[str]:
        """Problems with the table itself (every kind resolves to a Backend class)."""
        return self.table.problems()
