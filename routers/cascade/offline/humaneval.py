"""HumanEval as a labelled task: prompt the model with the problem, extract the code it answers,
and grade it by running the problem's own ``test`` in the sandbox.

Prompting: **chat with an instruction** (not raw completion on ``/v1/completions``). The cascade,
the pre-routers and the speculative strategy all serve chat, which is what clients send; the
Qwen2.5-Coder *Instruct* models are tuned for it; and the answer's code block gives the scorers a
clear span to score. The instruction asks for the whole function in one ```python block and
nothing else, so no tokens are spent on explanations. The extracted code is run after the
problem's prompt (its imports and helper functions): an answer restating the function replaces
the prompt's stub, an answer with the body only completes it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.core.backend import ChatMessage
from routers.cascade.code import code_span, python_structure
from routers.cascade.examples import ExamplesCheck
from routers.cascade.sandbox import Sandbox

SYSTEM = ("You are an expert Python programmer. Complete the function the user gives you. Reply with the "
          "complete function, including the imports it needs, in a single ```python code block and nothing else.")
MAX_TOKENS = 512  # the longest canonical solution in dev is ~230 tokens; room for a verbose restatement
# Generation ends once the answer's code block has closed: only the first block is graded, so
# anything after it (an explanation, usage examples) is wasted decode time. The stop is the closing
# fence *followed by a newline*, which an opening fence never is (it carries ``python``), so a
# model that writes a sentence before its block is not cut off at the opening fence. A fence
# followed directly by end-of-text needs no stop: generation ends there anyway. The stop text is
# not part of the answer; the unterminated block then runs to the end of the text (``code_span``).
STOP = ("\n```\n",)


def request_text(problem: dict[str, Any]) -> str:
    return f"Complete this Python function:\n```python\n{problem['prompt']}```"


def humaneval_messages(problem: dict[str, Any]) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=request_text(problem))]


def program_for(problem: dict[str, Any], answer: str) -> str:
    """The file the sandbox runs: the prompt, the answer's code, the problem's test, the check."""
    code = code_span(answer).code
    prompt = problem["prompt"]
    return f"{prompt.rstrip()}\n{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def structure_of(problem: dict[str, Any], answer: str) -> str | None:
    """None when the answer's code parses and defines the entry point, else why not."""
    structure = python_structure(answer, problem["entry_point"], problem["prompt"])
    return None if structure.ok else structure.reason


def examples_program(problem: dict[str, Any], answer: str) -> str | None:
    """The program of a ``structural: python_examples`` tier's check, built from the same request
    text the cascade sees at request time; None when the prompt states no checkable example."""
    return ExamplesCheck().program(request_text(problem), answer)


def examples_key(problem: dict[str, Any], answer: str) -> str:
    """Names one verdict of :func:`examples_of` (the program and the check's sandbox)."""
    program = examples_program(problem, answer) or ""
    return hashlib.sha256(f"{ExamplesCheck().sandbox.identity()}|{program}".encode()).hexdigest()[:16]


def examples_of(problem: dict[str, Any], answer: str) -> str | None:
    """Why well-formed code fails the prompt's own examples (None: it holds them, none are stated,
    or the code is malformed, which the structural check reports first). Runs a subprocess."""
    program = None if structure_of(problem, answer) is not None else examples_program(problem, answer)
    return None if program is None else ExamplesCheck().run(program)


def grade_key(problem: dict[str, Any], answer: str, sandbox: Sandbox | None = None) -> str:
    """Names one verdict of :func:`passes`: the program run and the sandbox that runs it. A cached
    verdict under the same key needs no new process (each costs a fresh interpreter)."""
    program = program_for(problem, answer)
    identity = (sandbox or Sandbox()).identity()
    return hashlib.sha256(f"{identity}|{program}".encode()).hexdigest()[:16]


def passes(problem: dict[str, Any], answer: str, sandbox: Sandbox | None = None) -> bool:
    """pass@1 of one greedy answer: the problem's test passes in the sandbox."""
    if structure_of(problem, answer) is not None:
        return False  # would fail anyway; no process needed
    return (sandbox or Sandbox()).run(program_for(problem, answer)).passed
