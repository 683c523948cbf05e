"""HumanEval as a labelled task, without a model: code extraction, the structural check, grading in
the sandbox (canonical solutions pass, broken ones fail, hostile ones are contained), the code
scorers, and the replayed cascade's curve figures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.core.backend import TokenLogprob, TopLogprob
from gateway.core.config import Price
from gateway.core.detokenize import StopMatcher
from routers.cascade.code import code_span, code_tokens, python_structure, request_structure
from routers.cascade.config import CascadeTier
from routers.cascade.offline.answers import AnswerCache, BackendAnswer, _decode, _encode
from routers.cascade.offline.cli import signal_verdict, split_items
from routers.cascade.offline.humaneval import STOP, grade_key, humaneval_messages, passes, program_for
from routers.cascade.offline.labelled import final_number, load_labelled
from routers.cascade.offline.replay import confidences, curve_figures, replay, scorer_auroc_ci, sweep
from routers.cascade.sandbox import Sandbox
from routers.cascade.scorers import SCORERS

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "dev.jsonl"
needs_data = pytest.mark.skipif(not HUMANEVAL.exists(), reason="../shared/data/humaneval/dev.jsonl is not here")


def problems() -> list[dict[str, Any]]:
    return [json.loads(line) for line in HUMANEVAL.read_text().splitlines() if line.strip()]


def fenced(code: str, prose: str = "") -> str:
    return f"```python\n{code}\n```{prose}"


def test_code_span_takes_the_first_block_or_the_whole_answer() -> None:
    answer = "Here you go:\n```python\ndef f():\n    return 1\n```\nIt returns one."
    assert code_span(answer).code == "def f():\n    return 1"
    assert code_span("def f(): return 1").code == "def f(): return 1"
    assert code_span("```python\ndef f():\n    return 1").code == "def f():\n    return 1"  # cut off: no fence


def test_structure_needs_parsing_code_that_defines_the_entry_point() -> None:
    prompt = "def add(a, b):\n    \"\"\"Add.\"\"\"\n"
    assert python_structure(fenced("def add(a, b):\n    return a + b"), "add", prompt).ok
    assert python_structure(fenced("    return a + b"), "add", prompt).ok  # the body, continuing the prompt
    assert python_structure(fenced("def add(a, b) return a + b"), "add", prompt).reason == "syntax"
    assert python_structure(fenced("def plus(a, b):\n    return a + b"), "add", prompt).reason == "missing_function"
    assert python_structure("I cannot help with that.", "add", prompt).reason == "syntax"
    assert python_structure("```python\n```", "add", prompt).reason == "no_code"
    request = ("Complete this Python function:\n```python\ndef helper(x):\n    return x\n\n"
               "def add(a, b):\n    \"\"\"Add.\"\"\"\n```")
    assert request_structure(request, fenced("def add(a, b):\n    return a + b")).ok
    assert not request_structure(request, fenced("def helper(x):\n    return x")).ok


@needs_data
def test_canonical_solutions_pass_and_broken_ones_fail() -> None:
    rows = problems()[:12]
    sandbox = Sandbox(timeout_s=10)
    for row in rows:
        whole = row["prompt"] + row["canonical_solution"]
        assert passes(row, fenced(whole), sandbox), row["task_id"]
        assert passes(row, fenced(row["canonical_solution"].rstrip()), sandbox), row["task_id"]  # body only
        broken = f"def {row['entry_point']}(*args, **kwargs):\n    return None"
        assert not passes(row, fenced(broken), sandbox), row["task_id"]
    first = rows[0]
    assert "check(" + first["entry_point"] + ")" in program_for(first, fenced("pass"))
    messages = humaneval_messages(first)
    assert messages[0].role == "system" and first["prompt"] in messages[1].content
    assert messages[2].role == "assistant" and messages[2].content.endswith(first["prompt"])  # the prefill


def stopped(answer: str) -> str:
    """What a client reads of ``answer`` generated with the humaneval stop sequences, streamed in
    small pieces (the gateway's own stop matcher)."""
    matcher, out = StopMatcher(STOP), ""
    for start in range(0, len(answer), 3):
        text, hit = matcher.feed(answer[start:start + 3])
        out += text
        if hit:
            return out
    return out + matcher.flush()


@needs_data
def test_the_stops_end_the_body_and_the_code_still_passes() -> None:
    """The model continues the prefill (```python + the prompt) with the body; generation stops
    where the function ends: the closing fence, or a top-level test, print or comment after it."""
    row = problems()[0]
    body = row["canonical_solution"].rstrip()
    for after in ("\n```\nThis function checks every pair.", "\n\n\nprint(separate_paren_groups('()'))",
                  "\n\n# Test cases\nassert separate_paren_groups('') == []", "\n\ndef test():\n    pass"):
        cut = stopped(body + after)
        assert cut.rstrip() == body, after
        assert passes(row, cut)
    # An answer that opens its own block is graded whole (asked without the prefill).
    whole = fenced((row["prompt"] + row["canonical_solution"]).rstrip(), "\n\nIt checks every pair.")
    assert passes(row, whole) and not passes(row, "    return []")
    item = load_labelled(HUMANEVAL, task="humaneval")[0]
    assert item.messages[-1].role == "assistant" and item.messages[-1].content == "```python\n" + row["prompt"]
    assert item.extra == {"continue_final_message": True}
    assert load_labelled(HUMANEVAL, task="humaneval")[0].stop == STOP


def test_the_sandbox_contains_writes_loops_and_sockets(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    sandbox = Sandbox(timeout_s=2)
    write = sandbox.run(f"open({str(target)!r}, 'w').write('out')")
    assert not write.passed and "PermissionError" in write.detail and not target.exists()
    removal = sandbox.run(f"import os\nos.remove({str(HUMANEVAL)!r})")
    assert not removal.passed and "PermissionError" in removal.detail
    inside = sandbox.run("open('scratch.txt', 'w').write('ok')\nimport os\nassert os.environ['HOME'] == os.getcwd()")
    assert inside.passed, inside.detail
    loop = sandbox.run("while True:\n    pass")
    assert loop.status == "timeout"
    sleeper = sandbox.run("import time\ntime.sleep(60)")
    assert sleeper.status == "timeout"
    for program in ("import socket\nsocket.create_connection(('127.0.0.1', 6379), timeout=1)",
                    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:6379', timeout=1)",
                    "import subprocess\nsubprocess.run(['curl', 'http://127.0.0.1:6379'])",
                    "import ctypes\nctypes.CDLL(None)"):
        blocked = sandbox.run(program)
        assert not blocked.passed and "sandbox:" in blocked.detail, (program, blocked)
    assert "SLM_GATEWAY" not in sandbox.run("import os\nprint(os.environ)\nraise SystemExit(1)").detail
    memory = sandbox.run("x = bytearray(4 << 30)")
    assert not memory.passed and "MemoryError" in memory.detail


def test_network_namespace_when_the_kernel_allows_it() -> None:
    prefix = Sandbox().network_prefix()
    if not prefix:
        pytest.skip("unshare --net is not permitted here: the audit hook alone blocks sockets")
    # Even with the audit hook off (a raw socket from a fresh interpreter), nothing is reachable.
    import subprocess
    import sys

    probe = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 6379), timeout=1)\nexcept OSError:\n" \
            "    raise SystemExit(3)\n"
    done = subprocess.run([*prefix, sys.executable, "-I", "-c", probe], capture_output=True, timeout=30, check=False)
    assert done.returncode == 3


def tok(text: str, lp: float, second: float | None = None) -> TokenLogprob:
    top = (TopLogprob(text, lp),) + ((TopLogprob("alt", second),) if second is not None else ())
    return TokenLogprob(token=text, logprob=lp, top=top)


def test_code_scorers_read_the_code_block_only() -> None:
    sure, unsure = math.log(0.99), math.log(0.4)
    answer = [tok("```", sure, math.log(0.005)), tok("python\n", sure, math.log(0.005)),
              tok("return", unsure, math.log(0.35)), tok(" x", sure, math.log(0.005)),
              tok("\n```", sure, math.log(0.005)), tok(" Done", unsure, math.log(0.3))]
    inside = code_tokens(answer)
    assert [t.token for t in inside] == ["return", " x"]
    assert SCORERS["code_mean_logprob"](answer) == pytest.approx((unsure + sure) / 2)
    assert SCORERS["code_confident_share"](answer) == pytest.approx(0.5)  # "return": margin 0.05
    assert SCORERS["code_quantile_logprob"](answer) == pytest.approx(unsure + 0.1 * (sure - unsure))
    assert SCORERS["mean_logprob"](answer) > SCORERS["code_mean_logprob"](answer)  # the fences dilute it
    # A restated signature and docstring are copied from the prompt: not scored as the body.
    restated = [tok("```", sure), tok("python\n", sure), tok("def", sure), tok(" f(x):\n", sure),
                tok('    """', sure), tok("Doc.", sure), tok('"""\n', sure), tok("    return", unsure),
                tok(" x", sure), tok("\n```", sure)]
    assert [t.token for t in code_tokens(restated)] == ["    return", " x"]


def answer(correct: bool, score: float, structure: str | None = None, tokens: int = 10) -> BackendAnswer:
    return BackendAnswer("x", [tok("x", score)], correct, 1.0, 0.1, 5, tokens, structure)


def test_replay_escalates_low_scores_and_malformed_code() -> None:
    tier = CascadeTier(backend="small", scorer="mean_logprob", threshold=-1.0, structural="python")
    small = [answer(True, -0.1), answer(False, -2.0), answer(True, -0.1, "syntax")]
    large = [answer(True, -0.1), answer(True, -0.1), answer(True, -0.1)]
    price = Price(input_per_1m=1e6, output_per_1m=1e6)  # a dollar per token: costs are token counts
    out = replay(tier, small, large, price, price)
    assert [a.escalated for a in out] == [False, True, True]
    assert [a.cost_usd for a in out] == [15, 30, 30]
    assert confidences(tier, small)[2] < confidences(tier, small)[1]


def test_curve_figures_against_hand_computed_values() -> None:
    # Four items; the small model is wrong on the two least confident, the large one always right.
    order = [0.9, 0.1, 0.8, 0.2]
    small_ok, large_ok = [True, False, True, False], [True, True, True, True]
    share, quality = sweep(order, small_ok, large_ok)
    assert share.tolist() == [0, 0.25, 0.5, 0.75, 1.0] and quality.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    figures = curve_figures(order, small_ok, large_ok)
    # PGR = 0, .5, 1, 1, 1 -> trapezoid area 0.0625 + 0.1875 + 0.25 + 0.25 = 0.75
    assert figures["apgr"] == pytest.approx(0.75)
    assert figures["cpt50"] == 0.25 and figures["cpt95"] == 0.5
    assert figures["escalation_for_95pct_large"] == 0.5
    auroc, interval = scorer_auroc_ci(order, small_ok, rounds=200)
    assert auroc == 1.0 and interval is not None and interval[0] <= 1.0


def test_no_signal_is_said_in_plain_words() -> None:
    rng = np.random.default_rng(0)
    scores, correct = rng.random(200).tolist(), (rng.random(200) < 0.4).tolist()
    auroc, interval = scorer_auroc_ci(scores, correct)
    verdict = signal_verdict("mean_logprob", {"mean_logprob": {"auroc": auroc, "ci95": interval}})
    assert verdict.startswith("NO SIGNAL") and "cannot help" in verdict
    strong = signal_verdict("mean_logprob", {"mean_logprob": {"auroc": 0.8, "ci95": [0.7, 0.9]},
                                             "code_mean_logprob": {"auroc": 0.85, "ci95": [0.75, 0.93]}})
    assert strong.startswith("Signal") and "code_mean_logprob" in strong
    # A constant scorer (AUROC 0.5 on every resample) is never named the best one.
    flat = signal_verdict("mean_margin", {"mean_margin": {"auroc": 0.44, "ci95": [0.22, 0.68]},
                                          "code_confident_share": {"auroc": 0.5, "ci95": [0.5, 0.5]}})
    assert flat.startswith("NO SIGNAL: the best scorer (mean_margin, AUROC 0.44")


@needs_data
def test_tasks_are_detected_and_split_the_same_way_on_both_clis(tmp_path: Path) -> None:
    items = load_labelled(HUMANEVAL)
    assert len(items) == 100 and {i.task for i in items} == {"humaneval"} and items[0].max_tokens == 512
    fit, held = split_items(items, 0.5)
    assert len(fit) == len(held) == 50 and not {i.id for i in fit} & {i.id for i in held}
    assert [i.id for i in split_items(items, 0.5)[1]] == [i.id for i in held]
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"id": "g1", "question": "2+2?", "answer": "4"}) + "\n")
    [item] = load_labelled(gsm)
    assert item.task == "gsm8k" and item.is_correct("2 + 2 = 4.\nAnswer: 4") and not item.is_correct("Answer: 5")
    assert final_number("It is 1,234.0 apples") == "1234"
    with pytest.raises(ValueError, match="not a mmlu record"):
        load_labelled(HUMANEVAL, task="mmlu")


def test_models_dir_expansion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.backends.local.source import expand_models_dir, resolve_source

    monkeypatch.setenv("SLM_GATEWAY_MODELS", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert expand_models_dir("${SLM_GATEWAY_MODELS}/m.gguf") == str(tmp_path / "m.gguf")
    assert resolve_source("$SLM_GATEWAY_MODELS/m.gguf").gguf_path == tmp_path / "m.gguf"
    monkeypatch.delenv("SLM_GATEWAY_MODELS")
    assert expand_models_dir("${SLM_GATEWAY_MODELS}/m.gguf") == os.path.expanduser("~/.cache/slm-gateway/models/m.gguf")


@needs_data
def test_verdicts_are_kept_with_the_cached_answer_until_program_or_sandbox_change(tmp_path: Path) -> None:
    item = load_labelled(HUMANEVAL, task="humaneval")[0]
    right = fenced(item.problem["prompt"] + item.problem["canonical_solution"])
    cache = AnswerCache(tmp_path / "answers.json")
    cache.rows["k"] = _encode(BackendAnswer(right, [tok("x", -0.1)], True, 1.0, 0.1, 5, 1), item)
    cache.save()
    row = AnswerCache.open(cache.path).rows["k"]
    assert row["graded"] == [grade_key(item.problem, right), True]
    row["graded"][1] = False  # a reload reads the stored verdict: no sandbox process
    assert _decode(row, item).correct is False
    row["graded"][0] = grade_key(item.problem, right, Sandbox(timeout_s=1.5))  # graded by another sandbox
    assert _decode(row, item).correct is True and row["graded"] == [grade_key(item.problem, right), True]
    row["text"] = fenced(f"def {item.problem['entry_point']}(*args):\n    return None")  # another program
    assert _decode(row, item).correct is False and row["graded"][0] != grade_key(item.problem, right)
