"""The Grafana board (helm/slm-gateway/dashboards/slm-gateway.json): shipped by the chart as a
ConfigMap for Grafana's dashboard sidecar, off by default, and every metric its queries name is one
a real gateway process exports on ``/metrics`` after serving the known mix."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess
from tests.helm_support import CHART, FULLNAME, KUBE_VERSION, NAMESPACE, kubernetes_validate, load_chart, only, render
from tests.observability_support import ADMIN_KEY, mix_policy, serve_mix

BOARD_PATH = CHART / "dashboards" / "slm-gateway.json"
METRIC = re.compile(r"\bslm_gateway_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    yield from load_chart()


def board() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BOARD_PATH.read_text())
    return data


def queries(data: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in data["panels"] for target in panel.get("targets", [])]
    exprs += [variable["definition"] for variable in data["templating"]["list"] if "definition" in variable]
    return exprs


def test_off_by_default(chart: Any) -> None:
    assert not [d for d in render(chart, {}) if d["kind"] == "ConfigMap" and "grafana_dashboard" in
                d["metadata"].get("labels", {})]


def test_the_option_renders_a_valid_config_map_holding_the_board(chart: Any) -> None:
    docs = render(chart, {"grafanaDashboard": {"enabled": True, "folder": "LLM", "labels": {"team": "ml"}}})
    config_map = only(docs, "ConfigMap", f"{FULLNAME}-grafana-dashboard")
    kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)
    metadata = config_map["metadata"]
    assert metadata["namespace"] == NAMESPACE
    assert metadata["labels"]["grafana_dashboard"] == "1" and metadata["labels"]["team"] == "ml"
    assert metadata["annotations"] == {"grafana_folder": "LLM"}
    assert json.loads(config_map["data"]["slm-gateway.json"]) == board()  # the file, byte for byte as JSON
    elsewhere = render(chart, {"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "labelValue": "x"}})
    moved = only(elsewhere, "ConfigMap", f"{FULLNAME}-grafana-dashboard")
    assert moved["metadata"]["namespace"] == "monitoring" and moved["metadata"]["labels"]["grafana_dashboard"] == "x"
    assert "annotations" not in moved["metadata"]


def test_the_board_is_well_formed() -> None:
    data = board()
    panels = data["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and all(target["expr"] for target in panel["targets"])
    titles = " ".join(panel["title"] for panel in panels).lower()
    for subject in ("reference llm", "per route", "escalation", "speculative", "latency", "first token", "errors"):
        assert subject in titles


@pytest.fixture(scope="module")
def exported() -> Iterator[str]:
    with serve_in_thread(FakeConfig(completion_tokens=8)) as (url, _app):
        gateway = GatewayProcess(mix_policy(url), name="grafana", env={
            "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1"}).start()
        try:
            served = serve_mix(gateway)
            yield httpx.get(f"{gateway.url}/metrics", headers=served.headers, timeout=30).text
        finally:
            gateway.stop()


def test_every_metric_the_board_queries_is_exported(exported: str) -> None:
    declared = {line.split()[2]: line.split()[3] for line in exported.splitlines() if line.startswith("# TYPE ")}
    sampled = {line.split("{")[0].split()[0] for line in exported.splitlines() if line and not line.startswith("#")}
    exportable = set(sampled) | {name for name, kind in declared.items() if kind != "histogram"}
    exportable |= {name + suffix for name, kind in declared.items() if kind == "histogram"
                   for suffix in HISTOGRAM_SUFFIXES}
    named = {metric for expr in queries(board()) for metric in METRIC.findall(expr)}
    assert len(named) >= 15
    assert sorted(named - exportable) == []
    # Beyond being declared: the mix (local, cascades, speculative, LLM, an error) gave every one samples.
    assert sorted(named - sampled) == []


def test_metric_names_follow_prometheus_conventions(exported: str) -> None:
    for line in exported.splitlines():
        if not line.startswith("# TYPE slm_gateway_"):
            continue
        _, _, name, kind = line.split()
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name  # base unit in the name
    buckets = [float(m) for m in re.findall(r'slm_gateway_request_latency_seconds_bucket\{[^}]*le="([^"]+)"', exported)
               if m != "+Inf"]
    assert min(buckets) <= 0.01 and max(buckets) >= 60  # from a fast local token to a long LLM answer
