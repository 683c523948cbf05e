"""Prometheus metrics: names, values, bounded labels, multi-process mode, and the report CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounting.finalize import finalize_record
from gateway.accounting.metrics import GatewayMetrics
from gateway.accounting.offline.report_cli import register
from gateway.accounting.service import build_accounting
from gateway.core.config import Price
from gateway.core.record import CallRecord
from tests.test_accounting_stores import make_record


def value(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_observe_counts_requests_cost_escalations_and_errors() -> None:
    metrics = GatewayMetrics()
    record = make_record("slm>llm", escalated=True, calls=[
        CallRecord(backend="slm", model="s", started_at=0, prompt_tokens=10, completion_tokens=4,
                   cost_usd=0.0, latency_ms=30, used=False),
        CallRecord(backend="llm", model="l", started_at=0, prompt_tokens=10, completion_tokens=6,
                   cost_usd=0.000085, latency_ms=200, ttft_ms=50),
    ])
    finalize_record(record, Price(input_per_1m=2.5, output_per_1m=10))
    timed_out = CallRecord(backend="llm", model="l", started_at=0, status="upstream_timeout")
    failed = make_record("llm", calls=[timed_out])
    failed.status = "upstream_timeout"
    metrics.observe(record)
    metrics.observe(failed)
    metrics.set_circuit_state("llm", "open")
    got = samples(metrics)
    cascade = {"model": "auto", "route": "slm>llm"}
    assert value(got, "slm_gateway_requests_total", status="ok", **cascade) == 1
    assert value(got, "slm_gateway_escalations_total", **cascade) == 1
    assert value(got, "slm_gateway_cost_usd_total", **cascade) == pytest.approx(0.000085)
    assert value(got, "slm_gateway_upstream_calls_total", backend="slm", status="ok", used="false") == 1
    assert value(got, "slm_gateway_upstream_errors_total", backend="llm", kind="upstream_timeout") == 1
    assert value(got, "slm_gateway_upstream_tokens_total", backend="llm", kind="completion") == 6
    assert value(got, "slm_gateway_request_latency_seconds_count", **cascade) == 1
    assert value(got, "slm_gateway_circuit_state", backend="llm") == 2


def test_label_values_are_capped() -> None:
    metrics = GatewayMetrics(max_label_values=3)
    for i in range(10):
        record = make_record(f"route-{i}")
        record.public_model = f"model-{i}"
        metrics.observe(record)
    got = samples(metrics)
    routes = {dict(labels)["route"] for name, labels in got if name == "slm_gateway_requests_total"}
    assert routes == {"route-0", "route-1", "route-2", "other"}


def test_two_instances_do_not_share_state() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.observe(make_record("slm"))
    assert not any(name == "slm_gateway_requests_total" for name, _ in samples(second))


def test_multiprocess_mode_merges_workers(tmp_path: Path) -> None:
    script = (
        "from gateway.accounting.metrics import GatewayMetrics\n"
        "from tests.test_accounting_stores import make_record\n"
        "m = GatewayMetrics(); m.observe(make_record('slm'))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    repo = Path(__file__).resolve().parent.parent
    for _worker in range(2):
        subprocess.run([sys.executable, "-c", script], env=env, cwd=repo, check=True)
    reader = subprocess.run(
        [sys.executable, "-c", "from gateway.accounting.metrics import GatewayMetrics;"
         "import sys; sys.stdout.write(GatewayMetrics().render()[0].decode())"],
        env=env, cwd=repo, check=True, capture_output=True, text=True,
    )
    assert 'slm_gateway_requests_total{model="auto",route="slm",status="ok"} 2.0' in reader.stdout


async def test_report_cli_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service = build_accounting(None, tmp_path, 1000)
    await service.start()
    for route in ("slm", "slm", "llm"):
        await service.submit(make_record(route, cost_usd=0.002 if route == "llm" else 0.0))
    await service.close()
    expected = await _usage(tmp_path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    plot = tmp_path / "report.png"
    args = parser.parse_args(
        ["report", "--since", "1h", "--json", "--data-dir", str(tmp_path), "--plot", str(plot)]
    )
    # The CLI runs its own event loop: run it in a worker thread from this async test.
    assert await asyncio.to_thread(args.func, args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == expected
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    table_args = parser.parse_args(["report", "--data-dir", str(tmp_path)])
    assert await asyncio.to_thread(table_args.func, table_args) == 0
    assert "slm" in capsys.readouterr().out


async def _usage(data_dir: Path) -> dict[str, object]:
    service = build_accounting(None, data_dir, 1000)
    usage = await service.usage("1h", None, "route")
    await service.store.close()
    return usage
