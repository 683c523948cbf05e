"""Prometheus metrics for the gateway, on a registry owned by one :class:`GatewayMetrics`.

Names (all prefixed ``slm_gateway_``)::

    requests_total{route,model,status}                 client requests (model = public model)
    request_latency_seconds{route,model}               histogram, whole request
    request_ttft_seconds{route,model}                  histogram, time to first token
    prompt_tokens_total / completion_tokens_total{route,model}   the answers' usage
    cost_usd_total{route,model}                        spend, all upstream calls
    reference_cost_usd_total{route,model}              the "always the LLM" counterfactual
                                                       (savings = reference_cost - cost)
    escalations_total{route,model}
      (the route/model counters above are the accounting counters that declare a ``metric``
      in gateway/accounting/counters.py, counted as the usage aggregates count them)
    upstream_calls_total{backend,status,used}
    upstream_tokens_total{backend,kind}                kind = prompt | completion
    upstream_cost_usd_total{backend}
    upstream_errors_total{backend,kind}
    upstream_latency_seconds{backend}                  histogram, per call
    circuit_state{backend}                             0 closed, 1 half-open, 2 open
    shadow_* / selfcal_*{model,tier}                   self-calibrating cascades (selfcal_metrics.py)

Label values are bounded: each label keeps at most ``max_label_values`` distinct values and
reports the rest as ``other``, so a client inventing model names cannot blow up the series.
Multi-worker: when ``PROMETHEUS_MULTIPROC_DIR`` is set (it must be before prometheus_client
is imported, and the directory emptied at deploy), values live in that directory's mmap
files and :meth:`render` merges every worker's.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.accounting.counters import COUNTER_FIELDS
from gateway.accounting.facts import SHADOW_ENDPOINT, request_contribution
from gateway.accounting.selfcal_metrics import SelfCalMetrics
from gateway.core.record import RequestRecord

OVERFLOW_LABEL = "other"
_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_CIRCUIT_STATES = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}


class BoundedLabel:
    """A label's value set, capped: new values past the cap become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        text = value or "none"
        if text in self._seen:
            return text
        if len(self._seen) >= self.limit:
            return OVERFLOW_LABEL
        self._seen.add(text)
        return text


class GatewayMetrics:
    def __init__(self, *, max_label_values: int = 50, namespace: str = "slm_gateway") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._route = BoundedLabel(max_label_values)
        self._model = BoundedLabel(max_label_values)
        self._backend = BoundedLabel(max_label_values)
        self._status = BoundedLabel(max_label_values)
        ns, reg = namespace, self.registry
        rm = ("route", "model")
        # name -> (Prometheus counter, extra label names): one per counter that declares a metric.
        # observe() fills the one extra label there is, status.
        if any(c.labels not in ((), ("status",)) for c in COUNTER_FIELDS):
            raise ValueError("accounting counters may add only the 'status' label to their metric")
        self.counters = {
            c.name: (Counter(c.metric, c.help, (*rm, *c.labels), namespace=ns, registry=reg), c.labels)
            for c in COUNTER_FIELDS if c.metric is not None
        }
        self.latency = Histogram(
            "request_latency_seconds", "Client request latency", rm,
            namespace=ns, registry=reg, buckets=_LATENCY_BUCKETS_S,
        )
        self.ttft = Histogram(
            "request_ttft_seconds", "Time to first token", rm,
            namespace=ns, registry=reg, buckets=_LATENCY_BUCKETS_S,
        )
        self.reference_cost = Counter(
            "reference_cost_usd", "Counterfactual spend on the reference LLM", rm, namespace=ns, registry=reg
        )
        self.upstream_calls = Counter(
            "upstream_calls", "Upstream calls", ("backend", "status", "used"), namespace=ns, registry=reg
        )
        self.upstream_tokens = Counter(
            "upstream_tokens", "Upstream tokens", ("backend", "kind"), namespace=ns, registry=reg
        )
        self.upstream_cost = Counter(
            "upstream_cost_usd", "Upstream spend", ("backend",), namespace=ns, registry=reg
        )
        self.upstream_errors = Counter(
            "upstream_errors", "Failed upstream calls", ("backend", "kind"), namespace=ns, registry=reg
        )
        self.upstream_latency = Histogram(
            "upstream_latency_seconds", "Upstream call latency", ("backend",),
            namespace=ns, registry=reg, buckets=_LATENCY_BUCKETS_S,
        )
        self.circuit_state = Gauge(
            "circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", ("backend",),
            namespace=ns, registry=reg, multiprocess_mode="livemax",
        )
        self.selfcal = SelfCalMetrics(reg, ns, self._model)  # self-calibrating cascades (issue 22)

    def observe(self, record: RequestRecord) -> None:
        route, model = self._route(record.route or "unrouted"), self._model(record.public_model)
        with_status = (route, model, self._status(record.status))
        counted = request_contribution(record)
        for name, (metric, labels) in self.counters.items():
            value = getattr(counted, name)
            if value:  # a zero adds nothing; skipping it saves a label lookup per counter
                metric.labels(*(with_status if labels else with_status[:2])).inc(value)
        if record.endpoint != SHADOW_ENDPOINT:  # a shadow job's time is no client's latency
            self.latency.labels(route, model).observe(record.latency_ms / 1000)
            if record.ttft_ms is not None:
                self.ttft.labels(route, model).observe(record.ttft_ms / 1000)
        if record.reference_cost_usd is not None:
            self.reference_cost.labels(route, model).inc(record.reference_cost_usd)
        for call in record.calls:
            backend = self._backend(call.backend)
            status = self._status(call.status)
            self.upstream_calls.labels(backend, status, "true" if call.used else "false").inc()
            self.upstream_tokens.labels(backend, "prompt").inc(call.prompt_tokens)
            self.upstream_tokens.labels(backend, "completion").inc(call.completion_tokens)
            self.upstream_cost.labels(backend).inc(call.cost_usd)
            self.upstream_latency.labels(backend).observe(call.latency_ms / 1000)
            if call.status not in ("ok", "cancelled"):
                self.upstream_errors.labels(backend, status).inc()

    def set_circuit_state(self, backend: str, state: str) -> None:
        self.circuit_state.labels(self._backend(backend)).set(_CIRCUIT_STATES.get(state, 2.0))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``."""
        if self.multiprocess_dir:
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
