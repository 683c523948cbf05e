"""The live objects a policy describes: backends and strategies, built and started together.

A :class:`PolicyRuntime` is immutable once started. Reloading a policy (SIGHUP) builds a
new runtime — reusing backends whose configuration did not change, so a reload does not
reload a model — and swaps it in only if it started cleanly; the old one keeps serving
until then.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gateway.backends.base import Backend
from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.openai_backend import OpenAICompatibleBackend
from gateway.errors import ModelNotFoundError
from policies.schema import BackendConfig, LocalBackend, Policy
from routers.base import GatewayResources, Strategy
from routers.registry import load_builtin_strategies

logger = logging.getLogger(__name__)


def build_backend(name: str, config: BackendConfig) -> Backend:
    if isinstance(config, LocalBackend):
        return LocalModelBackend(name, config)
    return OpenAICompatibleBackend(name, config)


class PolicyRuntime:
    def __init__(
        self, policy: Policy, backends: Mapping[str, Backend], strategies: Mapping[str, Strategy[Any]]
    ) -> None:
        self.policy = policy
        self.backends = dict(backends)
        self.strategies = dict(strategies)

    @classmethod
    async def start(cls, policy: Policy, reuse: PolicyRuntime | None = None) -> PolicyRuntime:
        backends: dict[str, Backend] = {}
        for name, config in policy.backends.items():
            previous = reuse.policy.backends.get(name) if reuse else None
            if reuse is not None and previous == config:
                backends[name] = reuse.backends[name]
                continue
            backend = build_backend(name, config)
            await backend.start()
            backends[name] = backend
        prices = {name: config.price for name, config in policy.backends.items()}
        resources = GatewayResources(backends=backends, prices=prices)
        registry = load_builtin_strategies()
        strategies: dict[str, Strategy[Any]] = {}
        for public, strategy_config in policy.models.items():
            strategy_class = registry.get(strategy_config.type)
            strategies[public] = strategy_class(public, strategy_config, resources)
        resources.strategies.update(strategies)
        for strategy in strategies.values():
            await strategy.start()
        return cls(policy, backends, strategies)

    def strategy(self, public_model: str) -> Strategy[Any]:
        try:
            return self.strategies[public_model]
        except KeyError:
            raise ModelNotFoundError(
                f"The model '{public_model}' does not exist. Available models: {', '.join(sorted(self.strategies))}",
                param="model",
            ) from None

    def ready(self) -> dict[str, bool]:
        return {name: backend.ready for name, backend in self.backends.items()}

    async def close(self, keep: PolicyRuntime | None = None) -> None:
        """Close backends, except those ``keep`` took over."""
        kept = {id(b) for b in keep.backends.values()} if keep else set()
        for backend in self.backends.values():
            if id(backend) not in kept:
                await backend.close()
