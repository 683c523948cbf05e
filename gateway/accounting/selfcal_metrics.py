"""Prometheus metrics of self-calibrating cascades (issue 22), on the gateway's registry.

Names (all prefixed ``slm_gateway_``)::

    shadow_jobs_started_total{model}              shadow jobs this process started
    shadow_jobs_skipped_total{model,reason}       not started: cap | budget | closed
    shadow_job_failures_total{model}              jobs that ended in an error (recorded, never the client's)
    selfcal_drift_alarms_total{model,tier}        calibration states this process stored with reason "drift"
    selfcal_threshold{model,tier}                 the shared store's current threshold (raw score scale)
    selfcal_disagreement_bound{model,tier}        its upper confidence bound on kept answers' disagreement
    selfcal_disagreement_estimate{model,tier}     the point estimate
    selfcal_kept_share{model,tier}                share of labelled requests the threshold keeps
    selfcal_labels{model,tier}                    labels ever added for the tier
    selfcal_state_version{model,tier}             the state's version (changes with every refit)
    shadow_spend_today_usd{model}                 today's (UTC) settled shadow spend, all replicas

Counters are this process's own (sum them over replicas). Gauges are read from the shared store
at scrape time (:meth:`SelfCalMetrics.set_cascade`), so every replica reports the same value: take
``max``, not ``sum``. The shadow jobs' spend per request path is the accounting counter
``shadow_cost_usd_total{route,model}``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.core.selfcal import CalibrationState

LabelCap = Callable[[str | None], str]


class SelfCalMetrics:
    def __init__(self, registry: CollectorRegistry, namespace: str, model_label: LabelCap) -> None:
        self._model = model_label  # the gateway's bounded model label: client-invented names stay capped
        ns, reg = namespace, registry
        mt = ("model", "tier")
        self.started = Counter("shadow_jobs_started", "Shadow jobs started", ("model",), namespace=ns, registry=reg)
        self.skipped = Counter("shadow_jobs_skipped", "Shadow jobs not started (cap, budget, closed)",
                               ("model", "reason"), namespace=ns, registry=reg)
        self.failures = Counter("shadow_job_failures", "Shadow jobs that failed", ("model",), namespace=ns,
                                registry=reg)
        self.drift_alarms = Counter("selfcal_drift_alarms", "Calibration states stored with reason drift", mt,
                                    namespace=ns, registry=reg)

        def gauge(name: str, help_text: str, labels: tuple[str, ...] = mt) -> Gauge:
            return Gauge(name, help_text, labels, namespace=ns, registry=reg, multiprocess_mode="livemax")

        self.threshold = gauge("selfcal_threshold", "Current threshold on the raw score scale")
        self.bound = gauge("selfcal_disagreement_bound", "Upper confidence bound on kept answers' disagreement")
        self.estimate = gauge("selfcal_disagreement_estimate", "Point estimate of kept answers' disagreement")
        self.kept_share = gauge("selfcal_kept_share", "Share of labelled requests the threshold keeps")
        self.labels = gauge("selfcal_labels", "Labels ever added for the tier")
        self.version = gauge("selfcal_state_version", "Version of the tier's calibration state")
        self.spend_today = gauge("shadow_spend_today_usd", "Today's settled shadow spend (UTC day, all replicas)",
                                 ("model",))

    def job_started(self, model: str) -> None:
        self.started.labels(self._model(model)).inc()

    def job_skipped(self, model: str, reason: str) -> None:
        self.skipped.labels(self._model(model), reason).inc()

    def job_failed(self, model: str) -> None:
        self.failures.labels(self._model(model)).inc()

    def drift_alarm(self, model: str, tier: int) -> None:
        self.drift_alarms.labels(self._model(model), str(tier)).inc()

    def set_cascade(self, model: str, tier: int, state: CalibrationState | None, labels: int) -> None:
        names = (self._model(model), str(tier))
        self.labels.labels(*names).set(labels)
        if state is None:
            return
        self.threshold.labels(*names).set(state.threshold)
        self.bound.labels(*names).set(state.disagreement_bound)
        self.estimate.labels(*names).set(state.disagreement_estimate)
        self.kept_share.labels(*names).set(state.kept_share)
        self.version.labels(*names).set(state.version)

    def set_spend_today(self, model: str, spent_usd: float) -> None:
        self.spend_today.labels(self._model(model)).set(spent_usd)
