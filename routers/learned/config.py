"""Policy configuration of the ``learned`` strategy (docs/learned-router.md)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field

from gateway.core.config import StrategyBase, anchored_path, split_target


class LearnedStrategy(StrategyBase):
    """Pre-call learned router: score the request, ``strong`` if score >= threshold else ``weak``.

    ``weak`` / ``strong`` are a backend or a public model; bare names resolve to a backend
    first, then a model; write ``backend:NAME`` / ``model:NAME`` to say which (as in ``rules``).
    """

    type: Literal["learned"]
    implementation: ClassVar[str] = "routers.learned.strategy:Learned"

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

    def anchored(self, base: Path) -> Self:
        return self.model_copy(update={"router_dir": anchored_path(self.router_dir, base)})
