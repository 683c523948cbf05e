"""HumanEval on the real Qwen2.5-Coder pair (``-m slow``): `slm-gateway eval --task humaneval --json`
on a few dev problems through policies/examples/code.yaml, graded in the sandbox, answers cached
and reused by a second run (no generation the second time); and the cascade's examples check on
the real 0.5B model behind a gateway, through the openai client."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gateway.backends.local.source import models_dir
from gateway.cli import main
from tests.gateway_process import GatewayProcess

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
    # Each answer continues the prefill (the code block and the prompt): a body, not a restatement.
    assert len(stored) == 6 and all(row["text"].startswith((" ", "\t", "\n")) for row in stored.values())
    assert main(argv) == 0  # every answer from the cache: the same figures
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accuracy"] == result["accuracy"] and again["generation_s"] < 30

    assert all("examples" in row for row in stored.values())  # each answer's examples verdict, cached


FUNCTION = ('def add(a: int, b: int) -> int:\n    """Return the sum of a and b.\n'
            '    >>> add(2, 3)\n    {result}\n    """\n')


def test_the_examples_check_on_the_real_small_model() -> None:
    """The 0.5B writes ``return a + b`` for both requests; with the true example it is kept, with a
    false one (``add(2, 3)`` gives 7) the sandboxed check escalates it to the last tier (an echo)."""
    tier = {"backend": "small", "scorer": "mean_logprob", "threshold": -1e9, "structural": "python_examples"}
    policy = {"version": 1, "gateway": {"reference_llm": "large"},
              "backends": {"small": {"type": "local", "model": str(models_dir() / PAIR[0]), "threads": 1},
                           "large": {"type": "echo"}},
              "models": {"cascade": {"type": "cascade", "tiers": [tier, {"backend": "large"}]}}}
    gateway = GatewayProcess(policy, name="examples").start(timeout=900)
    try:
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=600)
        records = {}
        for result in (5, 7):
            messages = [{"role": "user", "content": f"Complete this Python function:\n```python\n"
                                                    f"{FUNCTION.format(result=result)}```"}]
            raw = client.chat.completions.with_raw_response.create(model="cascade", messages=messages,  # type: ignore[arg-type]
                                                                   max_tokens=128, temperature=0)
            request_id = raw.headers["x-slm-gateway-request-id"]
            for _ in range(50):  # the record is written when the request's scope closes
                found = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}", timeout=30)
                if found.status_code == 200:
                    records[result] = found.json()
                    break
                time.sleep(0.1)
    finally:
        gateway.stop()
    assert records[5]["route"] == "small" and "structural" not in records[5]["extra"]
    assert records[7]["escalated"] and records[7]["route"] == "small>large"
    [reason] = records[7]["extra"]["structural"]
    assert reason["reason"].startswith("examples: 1 of 1 examples fail: add(2, 3) gave 5, expected 7")
