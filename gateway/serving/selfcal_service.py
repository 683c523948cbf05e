"""The self-calibrating cascade's service parts, one set per process (issue 22).

:class:`SelfCalService` owns the shared self-calibration store and the process's
:class:`~gateway.serving.shadow.ShadowJobs`. Every policy load (start-up and each reload) is
wired through :meth:`SelfCalService.wire`, which gives its strategies' :class:`GatewayResources`
a shadow runner bound to that load and the store (behind :class:`MeteredSelfCalStore`, which
counts and logs drift alarms). ``/metrics`` asks :meth:`refresh_metrics` to copy each cascade's
current state from the store into the gauges at scrape time. :meth:`close` drains shadow jobs
(their records are still written) and closes the store, before the accounting sink closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.accounting.selfcal_metrics import SelfCalMetrics
from gateway.accounting.selfcal_settings import SelfCalSettings
from gateway.accounting.selfcal_store import DRIFT, SharedSelfCalStore, StoreError, build_selfcal_store, utc_day
from gateway.auth.keys import nano_to_usd
from gateway.core.selfcal import CalibrationState, Label
from gateway.core.strategy import GatewayResources
from gateway.serving.shadow import ShadowJobs
from gateway.state import AccountingSink, MetricsSink
from policies.schema import Policy

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

METRICS_READ_TIMEOUT_S = 1.0  # a scrape never waits longer on a slow store; the gauges keep their values


class MeteredSelfCalStore:
    """The strategies' :class:`~gateway.core.selfcal.SelfCalibrationStore`: the shared store, with
    a drift alarm (a counter and a log line) for every state this process stores with reason drift."""

    def __init__(self, store: SharedSelfCalStore, metrics: SelfCalMetrics | None) -> None:
        self.store = store
        self._metrics = metrics

    async def add_label(self, label: Label) -> int:
        return await self.store.add_label(label)

    async def labels(self, model: str, tier: int, limit: int) -> Sequence[Label]:
        return await self.store.labels(model, tier, limit)

    async def get_state(self, model: str, tier: int) -> CalibrationState | None:
        return await self.store.get_state(model, tier)

    async def put_state(self, state: CalibrationState) -> bool:
        stored = await self.store.put_state(state)
        if stored and state.reason == DRIFT:
            logger.warning(
                "self-calibration drift alarm: model %s tier %d tightened to threshold %.4g (disagreement bound "
                "%.3f at %.0f %% on %d labels, version %d)", state.model, state.tier, state.threshold,
                state.disagreement_bound, state.confidence * 100, state.labels_used, state.version)
            if self._metrics is not None:
                self._metrics.drift_alarm(state.model, state.tier)
        return stored


class SelfCalService:
    def __init__(self, store: SharedSelfCalStore, accounting: AccountingSink, metrics: MetricsSink | None) -> None:
        self.store = store
        selfcal_metrics = getattr(metrics, "selfcal", None) if metrics is not None else None
        self.metrics = selfcal_metrics if isinstance(selfcal_metrics, SelfCalMetrics) else None
        self.jobs = ShadowJobs(store, accounting, metrics, self.metrics)
        self.strategy_store = MeteredSelfCalStore(store, self.metrics)

    @classmethod
    def from_settings(cls, settings: GatewaySettings, accounting: AccountingSink,
                      metrics: MetricsSink | None) -> SelfCalService | None:
        """The process's service, or None when ``SLM_GATEWAY_SELFCAL=off`` (cascades then run as configured)."""
        selfcal: SelfCalSettings = settings.selfcal
        if not selfcal.enabled:
            return None
        store = build_selfcal_store(settings.redis_url, settings.data_dir, max_labels=selfcal.max_labels,
                                    hold_ttl_s=selfcal.hold_ttl_s, redis_pool=settings.reliability.redis_pool)
        return cls(store, accounting, metrics)

    def wire(self, policy: Policy, resources: GatewayResources) -> None:
        """Offer one policy load's strategies the shadow runner and the store."""
        resources.shadow = self.jobs.bind(policy, resources)
        resources.selfcal_store = self.strategy_store

    async def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        try:
            await asyncio.wait_for(self._read_into_gauges(self.metrics), timeout=METRICS_READ_TIMEOUT_S)
        except (StoreError, TimeoutError) as exc:
            logger.warning("self-calibration gauges not refreshed: %s", exc or type(exc).__name__)

    async def _read_into_gauges(self, metrics: SelfCalMetrics) -> None:
        day = utc_day()
        models: set[str] = set()
        for model, tier in await self.store.cascades():
            state = await self.store.get_state(model, tier)
            metrics.set_cascade(model, tier, state, await self.store.label_count(model, tier))
            models.add(model)
        for model in sorted(models):
            metrics.set_spend_today(model, nano_to_usd((await self.store.shadow_day(model, day)).spent_nano))

    async def close(self, grace_s: float) -> None:
        await self.jobs.close(grace_s)
        await self.store.close()
