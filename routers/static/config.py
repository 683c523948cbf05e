"""Policy configuration of the ``static`` strategy: always answer from one backend."""

from __future__ import annotations

from typing import ClassVar, Literal

from gateway.core.config import StrategyBase


class StaticStrategy(StrategyBase):
    """Always answer from one backend."""

    type: Literal["static"]
    implementation: ClassVar[str] = "routers.static.strategy:Static"

    backend: str

    def referenced_backends(self) -> list[str]:
        return [self.backend]
