"""The base of every strategy configuration (see policies/strategies.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrategyBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def referenced_backends(self) -> list[str]:
        """Backend names this strategy calls directly."""
        return []

    def referenced_models(self) -> list[str]:
        """Other public models (strategies) this strategy delegates to."""
        return []
