"""HumanEval as a labelled task: prompt the model with the problem, extract the code it answers,
and grade it by running the problem's own ``test`` in the sandbox.

Prompting: **chat with an instruction, the assistant's answer started for it** (not raw
completion on ``/v1/completions``). The cascade, the pre-routers and the speculative strategy all
serve chat, which is what clients send, and the Qwen2.5-Coder *Instruct* models are tuned for it.
The system message asks for the whole function in one ```python block and nothing else; the
user message is the problem's prompt in a code block; and the last message is the assistant's,
already holding ```python and the problem's prompt, continued by the model
(``continue_final_message``, gateway/core/continuation.py). Without that prefill both models
restate the signature and docstring before the body: ~70 % of the tokens they generated, and an
instruction not to ("Do not repeat the docstring") changed nothing (docs/collaboration.md). The
model's text is then the function body; the answer graded is prefill + text, and it is run after
the problem's prompt (its imports and helper functions).
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
MAX_TOKENS = 512  # the longest canonical solution in dev is ~230 tokens
# Generation ends where the function does: at the code block's closing fence, or at a line that
# starts at column 0 with what follows a function in a file — another definition, a test, a
# print, a comment (Codex's HumanEval stop sequences, plus the fence). Only the function is
# graded, so anything after it is wasted decode time (one 0.5B answer of 12 spent 512 tokens on a
# test list). The stop text is not part of the answer; the block then runs to the end (``code_span``).
STOP = ("\n```", "\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def answer_prefix(problem: dict[str, Any]) -> str:
    """The start of the assistant's answer the model continues: the code block and the prompt."""
    return f"```python\n{problem['prompt']}"


def whole_answer(problem: dict[str, Any], answer: str) -> str:
    """The answer as the client reads it: the prefill, then what the model wrote. An answer that
    opens its own code block is whole already (asked without the prefill: a continuation of the
    prefill never starts a block)."""
    return answer if answer.lstrip().startswith("```") else answer_prefix(problem) + answer


# The problem's code is in the user message *and* in the prefill: its prompt is processed twice
# (~316 tokens a request instead of ~187), and that is the larger part of an evaluation's time
# once the answers are bodies. Asked once — the user message only asking, the code in the prefill
# alone — the full dev set ran in 11-14 min instead of 22, but both models got worse: the 1.5B
# fell from 0.75 to 0.50 pass@1 (33 answers "# Your code here") or, reworded, to 0.61
# (docs/collaboration.md, "Speed"). Quality first.
def request_text(problem: dict[str, Any]) -> str:
    """The request as a client sends it without a prefill: the problem's code in the message."""
    return f"Complete this Python function:\n```python\n{problem['prompt']}```"


def humaneval_messages(problem: dict[str, Any]) -> list[ChatMessage]:
    """System, user, and the assistant's started answer (sent with ``continue_final_message``)."""
    return [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=request_text(problem)),
            ChatMessage(role="assistant", content=answer_prefix(problem))]


def program_for(problem: dict[str, Any], answer: str) -> str:
    """The file the sandbox runs: the prompt, the answer's code, the problem's test, the check."""
    code = code_span(whole_answer(problem, answer)).code
    prompt = problem["prompt"]
    return f"{prompt.rstrip()}\n{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def structure_of(problem: dict[str, Any], answer: str) -> str | None:
    """None when the answer's code parses and defines the entry point, else why not."""
    structure = python_structure(whole_answer(problem, answer), problem["entry_point"], problem["prompt"])
    return None if structure.ok else structure.reason


def examples_program(problem: dict[str, Any], answer: str) -> str | None:
    """The program of a ``structural: python_examples`` tier's check, built from the same request
    text the cascade sees at request time; None when the prompt states no checkable example."""
    # The text the cascade's check reads at request time: the user message, then the prefill.
    checked = f"{request_text(problem)}\n{answer_prefix(problem)}"
    return ExamplesCheck().program(checked, whole_answer(problem, answer))


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
