"""Process settings from the environment, and the ones the app applies at start-up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from gateway.app import build_app
from gateway.settings import GatewaySettings
from tests.gateway_process import smollm2_policy
from tests.inprocess import NoMetrics, RecordingSink


def test_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("SLM_GATEWAY_THREADS", raising=False)
    monkeypatch.delenv("SLM_GATEWAY_TORCH_THREADS", raising=False)
    assert GatewaySettings.from_env().threads is None
    monkeypatch.setenv("SLM_GATEWAY_THREADS", "3")
    assert GatewaySettings.from_env().threads == 3
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("SLM_GATEWAY_THREADS", bad)
        with pytest.raises(ValueError, match="SLM_GATEWAY_THREADS must be a positive integer"):
            GatewaySettings.from_env()
    # The old name still works, with a warning; the new one wins when both are set.
    monkeypatch.delenv("SLM_GATEWAY_THREADS")
    monkeypatch.setenv("SLM_GATEWAY_TORCH_THREADS", "2")
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        assert GatewaySettings.from_env().threads == 2
    assert "SLM_GATEWAY_TORCH_THREADS is deprecated" in caplog.text
    monkeypatch.setenv("SLM_GATEWAY_THREADS", "1")
    assert GatewaySettings.from_env().threads == 1


def test_the_app_gives_local_models_the_thread_setting(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    document = smollm2_policy()
    document["backends"]["own"] = {"type": "local", "model": "smollm2", "threads": 2, "context_length": 512}
    document["backends"]["slm"]["context_length"] = 512
    policy.write_text(yaml.safe_dump(document))
    app = build_app(GatewaySettings(policy_path=policy, data_dir=tmp_path / "data", threads=1),
                    accounting=RecordingSink(), metrics=NoMetrics())

    async def run() -> dict[str, int]:
        async with app.router.lifespan_context(app):
            backends = app.state.gateway.runtime.backends
            return {name: backends[name].inner.engine.threads for name in ("slm", "own")}

    # The process setting applies where the backend sets none; a backend's own threads: wins.
    assert asyncio.run(run()) == {"slm": 1, "own": 2}
