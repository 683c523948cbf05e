"""HumanEval on the real Qwen2.5-Coder pair (``-m slow``): `slm-gateway eval --task humaneval --json`
on a few dev problems through policies/examples/code.yaml, graded in the sandbox, answers cached
and reused by a second run (no generation the second time)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.backends.local.source import models_dir
from gateway.cli import main

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "dev.jsonl"
PAIR = ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all((models_dir() / name).exists() for name in PAIR) or not HUMANEVAL.exists(),
                       reason="Qwen2.5-Coder pair not in SLM_GATEWAY_MODELS, or ../shared/data not here"),
]


def test_eval_humaneval_json_on_the_real_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_GATEWAY_THREADS", os.environ.get("SLM_GATEWAY_THREADS", "1"))
    data = tmp_path / "three.jsonl"
    data.write_text("".join(HUMANEVAL.read_text().splitlines(keepends=True)[:3]))
    cache = tmp_path / "answers.json"
    argv = ["eval", "--policy", str(REPO / "policies" / "examples" / "code.yaml"), "--model", "cascade",
            "--data", str(data), "--task", "humaneval", "--cache", str(cache), "--cascade", "replay", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("n", "accuracy", "small_accuracy", "large_accuracy", "escalation_rate", "apgr", "cost_usd",
                "always_large_cost_usd"):
        assert key in result
    assert result["n"] == 3 and result["always_large_cost_usd"] > 0
    # The first three dev problems are easy: the 1.5B model solves at least two of them.
    assert result["large_accuracy"] >= 2 / 3
    stored = json.loads(cache.read_text())["answers"]
    assert len(stored) == 6 and all(row["text"].lstrip().startswith("```") for row in stored.values())
    assert main(argv) == 0  # every answer from the cache: the same figures
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accuracy"] == result["accuracy"] and again["generation_s"] < 30
