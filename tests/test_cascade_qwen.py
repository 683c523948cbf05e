"""Slow: the real Qwen2.5-Coder pair — 0.5B in-process, 1.5B behind a second gateway over HTTP —
on a handful of MMLU dev questions (``pytest -m slow tests/test_cascade_qwen.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.runtime import PolicyRuntime
from policies.loader import load_policy
from routers.cascade.offline.evaluation import ask_cascade, evaluation_metrics, run_evaluation
from routers.cascade.offline.labelled import answer_letter, load_labelled
from routers.cascade.scorers import SCORERS
from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
TIMEOUTS = {"connect": 5.0, "first_token": 600.0, "total": 900.0, "idle": 600.0}


@pytest.fixture(scope="module")
def qwen_pair() -> tuple[str, str]:
    fetch = SHARED / "models" / "fetch-qwen-pair"
    if not fetch.exists():
        pytest.skip("../shared/models/fetch-qwen-pair is not here")
    done = subprocess.run([str(fetch)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHON": sys.executable})
    small, large = done.stdout.split()[-2:]
    return small, large


@pytest.fixture(scope="module")
def cloud(qwen_pair: tuple[str, str]) -> Iterator[GatewayProcess]:
    policy = {"version": 1, "backends": {"llm": {"type": "local", "model": qwen_pair[1], "timeouts": TIMEOUTS}},
              "models": {"llm": {"type": "static", "backend": "llm"}}}
    process = GatewayProcess(policy, name="qwen-cloud").start(timeout=900)
    yield process
    process.stop()


def policy_file(tmp_path: Path, small: str, cloud_url: str, threshold: float) -> Path:
    tier: dict[str, Any] = {"backend": "slm", "scorer": "first_token_margin", "threshold": threshold}
    handoff_tier = {**tier, "threshold": -1e9, "early_exit": {"window": 1, "floor": -1e9, "token_floor": -0.7}}
    policy = {
        "version": 1, "gateway": {"reference_llm": "llm"},
        "backends": {
            "slm": {"type": "local", "model": small, "timeouts": TIMEOUTS},
            "llm": {"type": "openai", "base_url": f"{cloud_url}/v1", "model": "llm", "timeouts": TIMEOUTS,
                    "supports_prefix_continuation": True, "price": {"input_per_1m": 2.5, "output_per_1m": 10}},
        },
        "models": {"cascade": {"type": "cascade", "tiers": [tier, {"backend": "llm"}]},
                   "handoff": {"type": "cascade", "mode": "handoff", "tiers": [handoff_tier, {"backend": "llm"}]}},
    }
    path = tmp_path / "qwen-cascade.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


async def test_qwen_pair_cascade_on_mmlu(qwen_pair: tuple[str, str], cloud: GatewayProcess, tmp_path: Path) -> None:
    items = load_labelled(SHARED / "data" / "mmlu" / "dev.jsonl", 8, seed=1)
    policy = load_policy(policy_file(tmp_path, qwen_pair[0], cloud.url, threshold=0.5))
    runtime = await PolicyRuntime.start(policy)
    try:
        run = await run_evaluation(runtime, "cascade", items, concurrency=4)
        handoffs = [await ask_cascade(runtime, "handoff", item, stream=True) for item in items[:3]]
    finally:
        await runtime.close()
    # Greedy decoding everywhere: the cascade's answer is the small model's when its first-token
    # margin clears 0.5, and the large model's otherwise.
    for small, large, cascaded in zip(run.small, run.large, run.cascade, strict=True):
        confident = SCORERS["first_token_margin"](small.logprobs) >= 0.5
        assert cascaded.escalated is (not confident)
        assert cascaded.correct == (small.correct if confident else large.correct)
        assert cascaded.cost_usd == 0.0 if confident else cascaded.cost_usd > 0
    # The prompt format works for the pair: most answers start with a letter. Some begin to reason
    # instead ("To determine ...") and hit max_tokens first: 6 of 40 for the 0.5B model in one
    # sample; they count as wrong, for both models alike.
    for answers in (run.small, run.large):
        assert sum(answer_letter(a.text) is not None for a in answers) >= 6, [a.text for a in answers]
    result, _curve = evaluation_metrics(run, policy, "cascade")
    assert result["n"] == 8 and 0.0 <= result["escalation_rate"] <= 1.0
    assert all(h.ttft_s is not None for h in handoffs)
