"""Process settings from the environment, and the ones the app applies at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import yaml

from gateway.app import build_app
from gateway.settings import GatewaySettings
from tests.inprocess import NoMetrics, RecordingSink


def test_torch_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLM_GATEWAY_TORCH_THREADS", raising=False)
    assert GatewaySettings.from_env().torch_threads is None
    monkeypatch.setenv("SLM_GATEWAY_TORCH_THREADS", "3")
    assert GatewaySettings.from_env().torch_threads == 3
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("SLM_GATEWAY_TORCH_THREADS", bad)
        with pytest.raises(ValueError, match="SLM_GATEWAY_TORCH_THREADS must be a positive integer"):
            GatewaySettings.from_env()


def test_the_app_sets_torch_threads_before_loading_models(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "version": 1,
        "backends": {"llm": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "models": {"llm": {"type": "static", "backend": "llm"}},
    }))
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    app = build_app(GatewaySettings(policy_path=policy, data_dir=tmp_path / "data", torch_threads=wanted),
                    accounting=RecordingSink(), metrics=NoMetrics())

    async def run() -> int:
        async with app.router.lifespan_context(app):
            return torch.get_num_threads()

    try:
        assert asyncio.run(run()) == wanted
    finally:
        torch.set_num_threads(before)
