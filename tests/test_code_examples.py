"""The examples a code request states (routers/cascade/examples.py): what is read as an example and
what is not, and the check's verdicts in the real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routers.cascade.examples import Example, ExamplesCheck, stated_examples

HUMANEVAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "humaneval" / "dev.jsonl"

PROMPT = '''
def f(xs: list, k: int = 1) -> list:
    """Doctest and prose forms, and lines that are not examples.
    >>> f([1, 2], 2)
    [2, 4]
    >>> f([])
    []
    f([3]) ==> [3]
    f([1.5], k=2) returns [3.0].
    f((1,)) # => (1,) (a tuple is fine)
    f([7]) should return [7]
    f(xs) == xs
    f([2]) = 2 * xs
    f([5]) == ""5"
    g([1]) == [1]
    """
'''


def test_examples_are_literal_calls_of_the_function_with_literal_results() -> None:
    assert stated_examples(PROMPT, "f") == [
        Example("f([1, 2], 2)", "[2, 4]"), Example("f([])", "[]"), Example("f([3])", "[3]"),
        Example("f([1.5], k=2)", "[3.0]"), Example("f((1,))", "(1,)"), Example("f([7])", "[7]")]
    assert stated_examples(PROMPT, "g") == [Example("g([1])", "[1]")]
    assert stated_examples("def f(x):\n    return x\n", "f") == []


def request(body: str) -> str:
    return f"Complete this:\n```python\n{PROMPT}    {body}\n```"


@pytest.mark.parametrize(("body", "verdict"), [
    ("return [x * k for x in xs]", None),
    ("return tuple(x * k for x in xs)", None),  # lists and tuples compare alike
    ("return [x * k + 1e-9 for x in xs]", None),  # floats within 1e-6
    ("return [x * 2 for x in xs]", "examples: 3 of 6 examples fail: f([3]) gave [6], expected [3]"),
    ("return xs[5]", "examples: 6 of 6 examples fail: f([1, 2], 2) raised IndexError"),
])
def test_the_check_runs_the_answer_against_them(body: str, verdict: str | None) -> None:
    check = ExamplesCheck()
    answer = f"```python\n{PROMPT}    {body}\n```"
    program = check.program(request(body), answer)
    assert program is not None
    assert check.run(program) == verdict


def test_no_examples_no_check_and_hostile_code_is_contained(tmp_path: Path) -> None:
    check = ExamplesCheck()
    assert check.program("Write add:\n```python\ndef add(a, b):\n    pass\n```", "```python\nx = 1\n```") is None
    assert check.program("hello", "hi") is None
    outside = tmp_path / "escaped"
    body = f"open({str(outside)!r}, 'w').write('x'); return xs"
    program = check.program(request(body), f"```python\n{PROMPT}    {body}\n```")
    assert program is not None
    assert check.run(program) is not None and not outside.exists()
    looping = check.program(request("while True: pass"), f"```python\n{PROMPT}    while True: pass\n```")
    assert looping is not None and (check.run(looping) or "").startswith("examples:")


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="../shared/data/humaneval/dev.jsonl is not here")
def test_canonical_solutions_hold_their_prompts_examples() -> None:
    """Every dev solution holds what its prompt states, but for prompts whose examples are wrong or
    whose prose reads as one (116, 130, 148: a right answer there escalates; that costs, never
    quality), and most prompts state examples."""
    check = ExamplesCheck()
    failing, stated = [], 0
    for line in HUMANEVAL.read_text().splitlines():
        problem = json.loads(line)
        text = f"Complete this Python function:\n```python\n{problem['prompt']}```"
        program = check.program(text, f"```python\n{problem['prompt']}{problem['canonical_solution']}```")
        if program is None:
            continue
        stated += 1
        if check.run(program) is not None:
            failing.append(problem["task_id"])
    assert stated >= 80
    assert failing == ["HumanEval/116", "HumanEval/130", "HumanEval/148"]
