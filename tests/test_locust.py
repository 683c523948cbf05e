"""The Locust load test runs headless for a few seconds and reports requests with no failures.

Default tier: against the fake upstream (fast). Slow tier: against a real gateway process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess

REPO = Path(__file__).resolve().parent.parent
LOCUST = Path(sys.executable).parent / "locust"


def run_locust(host: str, user_classes: list[str], tmp_path: Path, *, seconds: int = 5, users: int = 2,
               env: dict[str, str] | None = None) -> dict[tuple[str, str], dict[str, str]]:
    """Run locust headless; return its --csv stats rows keyed by (Type, Name)."""
    prefix = tmp_path / "locust"
    command = [str(LOCUST), "-f", str(REPO / "loadtests" / "locustfile.py"), "--host", host, "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--csv", str(prefix),
               "--only-summary", "--stop-timeout", "10", *user_classes]
    full_env = {**os.environ, "LOADTEST_MAX_TOKENS": "8", **(env or {})}
    done = subprocess.run(command, cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=seconds + 90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve_in_thread(FakeConfig(completion_tokens=8)) as (url, _app):
        yield url


def assert_clean(rows: dict[tuple[str, str], dict[str, str]], names: list[tuple[str, str]]) -> None:
    aggregated = rows[("", "Aggregated")]
    assert int(aggregated["Request Count"]) > 0
    assert int(aggregated["Failure Count"]) == 0
    for key in names:
        assert key in rows, f"no stats row {key}; rows: {sorted(rows)}"
        assert int(rows[key]["Request Count"]) > 0
        assert int(rows[key]["Failure Count"]) == 0


def test_chat_and_stream_users(fake_url: str, tmp_path: Path) -> None:
    rows = run_locust(fake_url, ["ChatUser", "StreamChatUser"], tmp_path)
    assert_clean(rows, [("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions [stream]"),
                        ("METRIC", "ttft_ms"), ("METRIC", "tokens_per_s"), ("GET", "/v1/models")])


def test_completions_and_mixed_users(fake_url: str, tmp_path: Path) -> None:
    rows = run_locust(fake_url, ["CompletionsUser", "MixedModelsUser"], tmp_path)
    assert_clean(rows, [("POST", "/v1/completions"), ("POST", "chat [fake-model]")])


def test_failures_are_reported(tmp_path: Path) -> None:
    # The test must be able to fail: an upstream that always errors shows up as failures.
    with serve_in_thread(FakeConfig(error_rate=1.0)) as (url, _app):
        prefix = tmp_path / "locust"
        command = [str(LOCUST), "-f", str(REPO / "loadtests" / "locustfile.py"), "--host", url, "--headless",
                   "-u", "1", "-r", "1", "-t", "3s", "--csv", str(prefix), "--only-summary", "ChatUser"]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1  # locust exits 1 when any request failed
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}
    chat = rows[("POST", "/v1/chat/completions")]
    assert int(chat["Failure Count"]) == int(chat["Request Count"]) > 0


@pytest.mark.slow
def test_mixed_users_against_gateway(gateway: GatewayProcess, tmp_path: Path) -> None:
    rows = run_locust(gateway.url, ["MixedModelsUser"], tmp_path, seconds=10,
                      env={"LOADTEST_MAX_TOKENS": "4", "LOADTEST_API_KEY": "test-key"})
    assert_clean(rows, [("GET", "/v1/models")])
    assert any(kind == "POST" for kind, _name in rows)


def test_overhead_benchmark_smoke() -> None:
    """The overhead script drives direct and gateway paths end to end and prints its JSON."""
    command = [sys.executable, "-m", "loadtests.overhead", "--skip-litellm", "--duration", "1",
               "--warmup", "0.5", "--concurrency", "2", "--no-write", "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for target in ("direct", "gateway"):
        figures = report[target]["2"]
        assert figures["errors"] == 0, figures
        assert figures["completed"] > 0 and figures["rps"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert "added_p50_ms" in report["gateway"]["2"]
    assert "litellm" not in report


def test_overhead_verdict_checks_the_targets() -> None:
    from loadtests.overhead_report import verdict

    def phase(p50: float, p99: float, rps: float) -> dict[str, float]:
        return {"p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "rps": rps, "added_p50_ms": p50, "added_p99_ms": p99}

    fast = {"gateway": {"100": phase(0.8, 4.0, 1000)}, "litellm": {"100": phase(9, 20, 150)}}
    slow = {"gateway": {"100": phase(70, 190, 700)}, "litellm": {"100": phase(9, 20, 150)}}
    assert verdict(fast) == [
        "added p50 at 100 clients 0.8 ms (target ≤ 1 ms): met",
        "added p99 at 100 clients 4.0 ms (target ≤ 5 ms): met",
        "max req/s gateway / LiteLLM = 6.7x (target ≥ 5x): met",
    ]
    assert [line.endswith("NOT met") for line in verdict(slow)] == [True, True, True]
