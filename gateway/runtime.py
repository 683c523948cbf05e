"""The live objects a policy describes: backends and strategies, built and started together.

A :class:`PolicyRuntime` is immutable once started. Reloading a policy (SIGHUP) builds a
new runtime — reusing backends whose configuration did not change, so a reload does not
reload a model — and swaps it in only if it started cleanly; the old one keeps serving
until then.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.backends.registry import BackendRegistry
from gateway.core.backend import Backend
from gateway.core.config import Price
from gateway.core.errors import ModelNotFoundError
from gateway.core.strategy import GatewayResources, Strategy
from gateway.reliability.fallback import FallbackChain
from gateway.reliability.guarded import GuardedBackend
from policies.schema import BackendConfig, Policy, StrategyConfig
from routers.registry import StrategyRegistry

logger = logging.getLogger(__name__)


class ResourceWiring(Protocol):
    """Process-wide services a policy load's strategies are offered (the self-calibration service)."""

    def wire(self, policy: Policy, resources: GatewayResources) -> None: ...


def build_backend(name: str, config: BackendConfig, registry: BackendRegistry | None = None) -> Backend:
    """The backend, wrapped in its timeouts, retries and circuit breaker (``.inner`` is the raw one)."""
    inner = (registry or BackendRegistry(BackendConfig)).build(name, config)
    return GuardedBackend(inner, config.timeouts, config.retry, config.circuit_breaker)


class PolicyRuntime:
    def __init__(
        self, policy: Policy, backends: Mapping[str, Backend], strategies: Mapping[str, Strategy[Any]]
    ) -> None:
        self.policy = policy
        self.backends = dict(backends)
        self.strategies = dict(strategies)
        reference = policy.backends.get(policy.gateway.reference_llm or "")
        # The "always the LLM" counterfactual's price, looked up once per policy, not per request.
        self.reference_price: Price | None = reference.price if reference is not None else None

    @classmethod
    async def start(
        cls, policy: Policy, reuse: PolicyRuntime | None = None, *, threads: int | None = None,
        wiring: ResourceWiring | None = None,
    ) -> PolicyRuntime:
        """Build and start everything ``policy`` declares; ``threads`` is the process's thread
        setting for in-process models (``SLM_GATEWAY_THREADS``), None to let each measure;
        ``wiring`` adds the process's services to the strategies' resources (shadow runner, store)."""
        backends: dict[str, Backend] = {}
        registry = BackendRegistry(BackendConfig)
        for name, config in policy.backends.items():
            previous = reuse.policy.backends.get(name) if reuse else None
            if reuse is not None and previous == config:
                backends[name] = reuse.backends[name]
                continue
            if reuse is not None and previous is not None and _same_source(previous, config):
                # Only reliability settings changed: keep the loaded model / connection pool.
                old = reuse.backends[name]
                backends[name] = GuardedBackend(getattr(old, "inner", old), config.timeouts, config.retry,
                                                config.circuit_breaker)
                continue
            backend = build_backend(name, config.with_process_threads(threads), registry)
            await backend.start()
            backends[name] = backend
        prices = {name: config.price for name, config in policy.backends.items()}
        resources = GatewayResources(backends=backends, prices=prices)
        if wiring is not None:  # before the strategies are built: they may look at what is offered
            wiring.wire(policy, resources)
        strategy_registry = StrategyRegistry(StrategyConfig)
        strategies: dict[str, Strategy[Any]] = {
            public: strategy_registry.build(public, strategy_config, resources)
            for public, strategy_config in policy.models.items()
        }
        resources.strategies.update(strategies)
        for strategy in strategies.values():
            await strategy.start()
        # The request path sees each model behind its fallback chain (empty when none is
        # declared); sibling strategies keep calling each other directly.
        served: dict[str, Strategy[Any]] = {
            public: FallbackChain(strategy, [strategies[f] for f in policy.fallbacks.get(public, [])])
            for public, strategy in strategies.items()
        }
        return cls(policy, backends, served)

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

    def circuits(self) -> dict[str, str]:
        """Each backend's circuit-breaker state: closed, open or half_open."""
        return {name: str(getattr(backend, "circuit_state", "closed")) for name, backend in self.backends.items()}

    async def close(self, keep: PolicyRuntime | None = None) -> None:
        """Close backends, except those ``keep`` took over."""
        kept = {id(getattr(b, "inner", b)) for b in keep.backends.values()} if keep else set()
        for backend in self.backends.values():
            if id(getattr(backend, "inner", backend)) not in kept:
                await backend.close()


def _same_source(old: BackendConfig, new: BackendConfig) -> bool:
    """Same backend apart from settings the reliability wrapper alone applies."""
    wrapper_only = set(type(new).wrapper_settings)
    return type(old) is type(new) and old.model_dump(exclude=wrapper_only) == new.model_dump(exclude=wrapper_only)


def registry_problems() -> list[str]:
    """What ``slm-gateway policy check`` adds to a file's own problems: every backend kind and
    strategy of the policy unions must resolve to its implementation (which imports them all,
    torch included: a check, not the request path)."""
    return BackendRegistry(BackendConfig).check() + StrategyRegistry(StrategyConfig).check()
