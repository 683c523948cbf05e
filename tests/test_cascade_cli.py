"""``slm-gateway calibrate`` with the real SmolLM2 on a small labelled file: the map it writes into
the policy is monotone, and its threshold meets the target on that file when re-checked."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.runtime import PolicyRuntime
from policies.loader import check_policy, load_policy
from routers.cascade.calibration import apply_calibration
from routers.cascade.config import CascadeStrategy
from routers.cascade.offline.evaluation import BackendAnswer, ask_backend
from routers.cascade.offline.labelled import load_labelled
from routers.cascade.scorers import SCORERS

# Answers SmolLM2-135M gets right and wrong: the file needs both for a calibration to exist.
QUESTIONS = [
    ("What is the capital of France? Answer in one word.", ["paris"]),
    ("What colour is the sky on a clear day? Answer in one word.", ["blue"]),
    ("How many legs does a spider have? Answer with a number.", ["8", "eight"]),
    ("What is 2 + 2? Answer with a number.", ["4", "four"]),
    ("Who wrote the novel 'Middlemarch'? Answer with the name only.", ["eliot"]),
    ("What is the chemical symbol for tungsten? Answer with the symbol only.", ["w"]),
    ("In which year did the Peace of Westphalia get signed? Answer with the year.", ["1648"]),
    ("What is the capital of Burkina Faso? Answer in one word.", ["ouagadougou"]),
    ("What is the largest planet in the solar system? Answer in one word.", ["jupiter"]),
    ("What is 17 * 23? Answer with a number.", ["391"]),
    ("What is the freezing point of water in Celsius? Answer with a number.", ["0", "zero"]),
    ("Which element has atomic number 79? Answer in one word.", ["gold"]),
]


def labelled_file(path: Path) -> Path:
    path.write_text("".join(json.dumps({"question": q, "acceptable": a}) + "\n" for q, a in QUESTIONS))
    return path


def policy_file(path: Path) -> Path:
    policy = {
        "version": 1,
        "backends": {"slm": {"type": "local", "model": "smollm2"},
                     "llm": {"type": "local", "model": "smollm2", "served_name": "same-model-as-llm"}},
        "models": {"cascade": {"type": "cascade", "tiers": [
            {"backend": "slm", "scorer": "mean_logprob", "threshold": -1.0}, {"backend": "llm"}]}},
    }
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


async def answer_again(policy_path: Path, data: Path) -> list[BackendAnswer]:
    runtime = await PolicyRuntime.start(load_policy(policy_path))
    try:
        return [await ask_backend(runtime.backends["slm"], item) for item in load_labelled(data)]
    finally:
        await runtime.close()


def test_calibrate_writes_a_monotone_map_that_meets_its_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, policy_path, plot = labelled_file(tmp_path / "qa.jsonl"), policy_file(tmp_path / "p.yaml"), tmp_path / "r.png"
    code = main(["calibrate", "--policy", str(policy_path), "--model", "cascade", "--data", str(data),
                 "--target", "accuracy=0.9", "--write", "--plot", str(plot), "--concurrency", "4"])
    assert code == 0, capsys.readouterr().err
    assert check_policy(str(policy_path)) == []
    assert plot.stat().st_size > 1000
    tier = load_policy(policy_path).models["cascade"]
    assert isinstance(tier, CascadeStrategy)
    small = tier.tiers[0]
    assert small.calibration is not None and small.threshold is not None
    mapped = [apply_calibration(small.calibration, s) for s in (-8.0, -4.0, -2.0, -1.0, -0.5, -0.1, 0.0)]
    assert all(b >= a for a, b in itertools.pairwise(mapped))
    # Re-check independently: answer the file again and keep what the written threshold keeps.
    answers = asyncio.run(answer_again(policy_path, data))
    kept = [a.correct for a in answers
            if apply_calibration(small.calibration, SCORERS[small.scorer](a.logprobs)) >= small.threshold]
    assert 0 < sum(a.correct for a in answers) < len(answers), "the file must hold right and wrong answers"
    assert not kept or sum(kept) / len(kept) >= 0.9
