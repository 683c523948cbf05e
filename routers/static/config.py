"""Policy configuration of the ``static`` strategy: always answer from one backend."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from gateway.core.config import StrategyBase, StrictModel
from routers.cascade.selfcal.config import JudgeConfig, judge_backend


class StaticShadow(StrictModel):
    """Monitor-only shadowing (docs/cascade.md, "Shadowing a static route"): a uniform
    ``sample_rate`` share of the route's answers is also asked of the reference ``backend`` off
    the client's path, and the pair judged; the labels give the route's agreement with the
    reference (``slm-gateway report``). Nothing is decided from them. The shadow and judge calls
    are the gateway's spend (a shadow record), never the client's."""

    backend: str = Field(min_length=1, description="The reference backend answers are compared with.")
    judge: JudgeConfig
    sample_rate: float = Field(0.05, gt=0.0, le=1.0, description="Share of the route's answers that are labelled.")
    max_concurrent: int = Field(4, ge=1, description="Shadow jobs of this model running at once.")
    budget_usd_per_day: float = Field(1.0, ge=0.0, description="Shadow and judge spend per UTC day.")


class StaticStrategy(StrategyBase):
    """Always answer from one backend."""

    type: Literal["static"]
    implementation: ClassVar[str] = "routers.static.strategy:Static"

    backend: str
    shadow: StaticShadow | None = None

    @model_validator(mode="after")
    def _shadow_elsewhere(self) -> StaticStrategy:
        if self.shadow is not None and self.shadow.backend == self.backend:
            raise ValueError("shadow.backend must be another backend: a route agrees with itself")
        return self

    def referenced_backends(self) -> list[str]:
        # The shadow and judge backends count: they must exist, and they receive the request's text (privacy).
        names = [self.backend]
        if self.shadow is not None:
            for name in (self.shadow.backend, judge_backend(self.shadow.judge)):
                if name is not None and name not in names:
                    names.append(name)
        return names

    def billed_backends(self) -> list[str]:
        # Shadow and judge calls are the gateway's spend (a shadow record, never the client's key).
        return [self.backend]
