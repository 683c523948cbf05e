"""The self-calibration service inside the real app: wiring on every policy load, the gauges on
/metrics, the usage API's per-cascade summary, shutdown with a shadow job in flight, and the
``slm-gateway selfcal status|apply`` and ``report`` commands on the same embedded store."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.accounting.metrics import GatewayMetrics
from gateway.accounting.offline import report_cli, selfcal_cli
from gateway.accounting.selfcal_report import clopper_pearson
from gateway.accounting.selfcal_sqlite import SQLiteSelfCalStore
from gateway.accounting.service import build_accounting
from gateway.app import build_app
from gateway.serving.selfcal_service import MeteredSelfCalStore
from gateway.serving.shadow import BoundShadowRunner
from gateway.settings import GatewaySettings
from tests.test_selfcal_store import label, state
from tests.test_shadow import POLICY, calling_job

CASCADE_POLICY = """\
# A comment the apply command must keep.
version: 1
backends:
  small: {type: echo}
  large: {type: echo}
models:
  cascade:
    type: cascade
    tiers:
      - backend: small      # the small tier
        scorer: mean_logprob
        threshold: -1.5     # replaced by apply
        max_tokens: 64
      - backend: large
"""


def app_settings(tmp_path: Path, **changes: Any) -> GatewaySettings:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    return GatewaySettings(policy_path=policy, data_dir=tmp_path / "data", **changes)


async def seed(data_dir: Path) -> None:
    """What the cascade's replicas would have stored: a state and 100 labels (kept ones agree 48/50)."""
    store = SQLiteSelfCalStore(data_dir / "selfcal.sqlite3")
    try:
        assert await store.put_state(state(1, reason="initial"))
        assert await store.put_state(state(2, reason="drift", threshold=-0.75))
        for index in range(100):  # label(i) is kept for even i; two of the kept ones disagree
            await store.add_label(label(index, agree=index not in (10, 20)))
    finally:
        await store.close()


async def test_every_policy_load_is_wired_and_the_gauges_and_usage_read_the_store(tmp_path: Path) -> None:
    settings = app_settings(tmp_path)
    await seed(settings.data_dir)
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        gateway = app.state.gateway
        for _ in range(2):  # the start-up load, then a reload
            resources = gateway.runtime.strategies["cascade"].resources
            assert isinstance(resources.shadow, BoundShadowRunner)
            assert isinstance(resources.selfcal_store, MeteredSelfCalStore)
            assert await gateway.reload_policy()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            for _ in range(3):  # client traffic for the usage side of the summary
                body = {"model": "cascade", "messages": [{"role": "user", "content": "hello there"}]}
                assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
            metrics = (await client.get("/metrics")).text
            for _ in range(100):  # records reach the store from a background writer: wait for the third
                summary = (await client.get("/v1/gateway/usage/cascades", params={"since": "1h"})).json()
                if summary["cascades"] and summary["cascades"][0]["requests"] == 3:
                    break
                await asyncio.sleep(0.05)
    assert 'slm_gateway_selfcal_threshold{model="cascade",tier="0"} -0.75' in metrics
    assert 'slm_gateway_selfcal_labels{model="cascade",tier="0"} 100.0' in metrics
    assert 'slm_gateway_selfcal_state_version{model="cascade",tier="0"} 2.0' in metrics
    [cascade] = summary["cascades"]
    agreement = cascade["agreement"]
    low, high = clopper_pearson(48, 50, 0.95)
    assert (agreement["labels"], agreement["agree"]) == (50, 48) and agreement["estimate"] == pytest.approx(0.96)
    assert (agreement["low"], agreement["high"]) == (pytest.approx(low), pytest.approx(high))
    assert 0.85 < low < 0.96 < high < 1.0
    assert cascade["drift_alarms"] == 1 and cascade["calibration"]["threshold"] == -0.75
    assert cascade["requests"] == 3 and cascade["kept_share"] == 1.0
    plus_minus = max(0.96 - low, high - 0.96) * 100
    assert cascade["sentence"] == (f"kept 100 % of requests local, agreement with the large model 96.0 % ± "
                                   f"{plus_minus:.1f} % (95 %, 50 labels), saved ${cascade['savings_usd']:.4f} "
                                   "in the last 1h")
    assert cascade["savings_usd"] > 0.01  # the echo "small" is free, the reference "large" is not


async def test_shutdown_cancels_a_running_shadow_job_within_the_drain_window_and_writes_its_record(
        tmp_path: Path) -> None:
    settings = app_settings(tmp_path, drain_seconds=0.5)
    app = build_app(settings)
    never = asyncio.Event()

    async def job(ctx: Any) -> None:
        await calling_job()(ctx)
        await never.wait()

    async with app.router.lifespan_context(app):
        runner = app.state.gateway.runtime.strategies["cascade"].resources.shadow
        assert runner.submit("cascade", job, max_concurrent=1, budget_usd_per_day=5.0, estimated_cost_usd=0.1)
        await asyncio.sleep(0.2)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5.0
    service = build_accounting(None, settings.data_dir)  # what a later process (or report) reads
    try:
        await service.start()
        assert await service.wait_idle()
        shadow = [r for r in await service.store.recent_records(10) if r["endpoint"] == "shadow"]
    finally:
        await service.close()
    assert [r["status"] for r in shadow] == ["cancelled"] and len(shadow[0]["calls"]) == 1


def run_cli(module: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


async def test_status_report_and_apply_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    await seed(data_dir)
    argv = ["selfcal", "status", "--json", "--since", "1h", "--data-dir", str(data_dir)]
    assert await asyncio.to_thread(run_cli, selfcal_cli, argv) == 0
    [status] = json.loads(capsys.readouterr().out)["cascades"]
    assert status["agreement"]["agree"] == 48 and status["calibration"]["version"] == 2
    argv = ["report", "--json", "--data-dir", str(data_dir)]
    assert await asyncio.to_thread(run_cli, report_cli, argv) == 0
    assert json.loads(capsys.readouterr().out)["cascades"][0]["model"] == "cascade"
    policy = tmp_path / "cascade.yaml"
    policy.write_text(CASCADE_POLICY)
    argv = ["selfcal", "apply", "--policy", str(policy), "--model", "cascade", "--data-dir", str(data_dir)]
    assert await asyncio.to_thread(run_cli, selfcal_cli, argv) == 0
    edited = policy.read_text()
    assert "# A comment the apply command must keep." in edited and "# the small tier" in edited
    tier = yaml.safe_load(edited)["models"]["cascade"]["tiers"][0]
    # The state's threshold (-0.75, raw) carried through its refitted map, which the policy now holds.
    assert tier["calibration"] == {"x": [-2.0, -1.0, 0.0], "y": [0.1, 0.5, 0.9]}
    assert tier["threshold"] == pytest.approx(0.5 + 0.25 * 0.4)
    assert edited.count("\n") == CASCADE_POLICY.count("\n") + 1  # one line added (calibration), nothing lost


async def test_a_stored_drift_state_raises_the_alarm_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = GatewayMetrics()
    store = MeteredSelfCalStore(SQLiteSelfCalStore(tmp_path / "selfcal.sqlite3"), metrics.selfcal)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.serving.selfcal_service"):
            assert await store.put_state(state(1, reason="initial"))
            assert await store.put_state(state(2, reason="drift", threshold=0.25))
            assert not await store.put_state(state(2, reason="drift"))  # another replica's: no second alarm
    finally:
        await store.store.close()
    value = metrics.registry.get_sample_value("slm_gateway_selfcal_drift_alarms_total", {"model": "cascade",
                                                                                          "tier": "0"})
    assert value == 1.0
    assert caplog.text.count("drift alarm") == 1 and "threshold 0.25 " in caplog.text
