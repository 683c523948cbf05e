"""Labelled evaluation data for cascades, one task per file (``--task`` or detected from its fields):

* ``mmlu`` — ``{"question", "choices": [4 strings], "answer": "A".."D"}``, scored by the letter
  the model answers (``../shared/data/mmlu/dev.jsonl``);
* ``gsm8k`` — ``{"question", "answer": "<number>"}``, scored by the last number of the answer;
* ``humaneval`` — ``{"task_id", "prompt", "entry_point", "test"}``: the answer's code must pass the
  problem's test in the sandbox (:mod:`routers.cascade.offline.humaneval`);
* ``acceptable`` — ``{"messages" | "question", "acceptable": [strings]}``: correct when the answer
  contains one of them, case-insensitively.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from gateway.core.backend import ChatMessage
from routers.cascade.offline.humaneval import MAX_TOKENS as HUMANEVAL_MAX_TOKENS
from routers.cascade.offline.humaneval import STOP as HUMANEVAL_STOP
from routers.cascade.offline.humaneval import examples_key as humaneval_examples_key
from routers.cascade.offline.humaneval import examples_of, humaneval_messages, passes, structure_of
from routers.cascade.offline.humaneval import grade_key as humaneval_grade_key

Task = Literal["mmlu", "gsm8k", "humaneval", "acceptable"]
TASKS: tuple[str, ...] = get_args(Task)
LETTERS = "ABCD"
LETTER_PATTERN = re.compile(r"\b([ABCD])\b")
NUMBER_PATTERN = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
INSTRUCTION = "Answer the following multiple choice question with the letter of the correct option only."
# Without it the Qwen2.5-Coder models begin to reason ("To determine ...") on a quarter to half of
# the questions and reach max_tokens before any letter; with it, none did in a 40-question sample
# (0.5B: 6/40 without a letter -> 0; accuracy 0.23 -> 0.35).
SYSTEM = ("You answer multiple-choice questions. Reply with the letter of the correct option (A, B, C or D) "
          "and nothing else.")
GSM8K_SYSTEM = "Solve the problem step by step, briefly. End with the line 'Answer: <number>'."
# Tokens an answer may take: a letter or a short phrase; a short worked solution; a function.
MAX_TOKENS: dict[str, int] = {"mmlu": 8, "acceptable": 8, "gsm8k": 384, "humaneval": HUMANEVAL_MAX_TOKENS}


@dataclass(frozen=True, slots=True)
class LabelledItem:
    messages: list[ChatMessage]
    gold: str
    multiple_choice: bool
    acceptable: tuple[str, ...] = ()
    task: Task = "acceptable"
    id: str = ""
    problem: dict[str, Any] = field(default_factory=dict)  # humaneval: the row (prompt, test, entry_point)

    @property
    def max_tokens(self) -> int:
        return MAX_TOKENS[self.task]

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop sequences of the generation (humaneval: the closing fence of the code block)."""
        return HUMANEVAL_STOP if self.task == "humaneval" else ()

    @property
    def extra(self) -> dict[str, Any]:
        """Request fields beyond the sampling ones (humaneval: continue the started answer)."""
        return {"continue_final_message": True} if self.task == "humaneval" else {}

    def is_correct(self, answer: str) -> bool:
        """Grade one answer (humaneval runs a subprocess: call it off the event loop)."""
        if self.task == "humaneval":
            return passes(self.problem, answer)
        if self.multiple_choice:
            return answer_letter(answer) == self.gold
        if self.task == "gsm8k":
            return final_number(answer) == self.gold
        lowered = answer.lower()
        return any(option.lower() in lowered for option in self.acceptable)

    def grade_key(self, answer: str) -> str | None:
        """humaneval: the key of this answer's verdict (graded in a subprocess, so worth caching);
        None for the tasks graded by reading the text."""
        return humaneval_grade_key(self.problem, answer) if self.task == "humaneval" else None

    def structure(self, answer: str) -> str | None:
        """humaneval: None when the code parses and defines the entry point, else why not."""
        return structure_of(self.problem, answer) if self.task == "humaneval" else None

    def examples(self, answer: str) -> str | None:
        """humaneval: why well-formed code fails the prompt's own examples (``structural:
        python_examples``), else None. Runs a subprocess: call it off the event loop."""
        return examples_of(self.problem, answer) if self.task == "humaneval" else None

    def examples_key(self, answer: str) -> str | None:
        return humaneval_examples_key(self.problem, answer) if self.task == "humaneval" else None


def answer_letter(answer: str) -> str | None:
    match = LETTER_PATTERN.search(answer.strip()[:40])
    return match.group(1) if match else None


def _number(text: str) -> str:
    value = float(text.replace(",", ""))
    return str(int(value)) if value.is_integer() else str(value)


def final_number(answer: str) -> str | None:
    """The number after the last 'Answer:' (else the last number in the text), normalised."""
    tail = answer.rsplit("Answer:", 1)[-1] if "Answer:" in answer else answer
    numbers = NUMBER_PATTERN.findall(tail) or NUMBER_PATTERN.findall(answer)
    try:
        return _number(numbers[-1]) if numbers else None
    except ValueError:
        return None


def detect_task(row: dict[str, Any]) -> Task:
    if "entry_point" in row and "test" in row and "prompt" in row:
        return "humaneval"
    if "choices" in row and "answer" in row:
        return "mmlu"
    if "acceptable" in row:
        return "acceptable"
    if "question" in row and "answer" in row:
        return "gsm8k"
    raise ValueError("a record needs question+choices+answer (mmlu), question+answer (gsm8k), "
                     "prompt+entry_point+test (humaneval) or acceptable answers")


def _item(row: dict[str, Any], task: Task, index: int) -> LabelledItem:
    ident = str(row.get("id") or row.get("task_id") or index)
    if task == "humaneval":
        return LabelledItem(humaneval_messages(row), "", False, task="humaneval", id=ident, problem=row)
    if task == "mmlu":
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"], strict=False))
        prompt = f"{INSTRUCTION}\n\n{row['question']}\n{options}\nAnswer:"
        system, user = ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=prompt)
        return LabelledItem([system, user], str(row["answer"]).strip().upper(), True, task="mmlu", id=ident)
    if task == "gsm8k":
        messages = [ChatMessage(role="system", content=GSM8K_SYSTEM), ChatMessage(role="user", content=row["question"])]
        return LabelledItem(messages, _number(str(row["answer"])), False, task="gsm8k", id=ident)
    given = row.get("messages") or [{"role": "user", "content": row["question"]}]
    return LabelledItem([ChatMessage(**m) for m in given], "", False, tuple(row["acceptable"]), id=ident)


def load_labelled(path: Path, limit: int | None = None, seed: int = 0, task: str | None = None
                  ) -> list[LabelledItem]:
    """Records of ``path`` as ``task`` (None: detected from the first record's fields); with
    ``limit``, a seeded random sample (the files are sorted by subject)."""
    with path.open() as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if task is not None and task not in TASKS:
        raise ValueError(f"--task is one of {', '.join(TASKS)}")
    chosen: Task = task if task is not None else (detect_task(rows[0]) if rows else "acceptable")  # type: ignore[assignment]
    for index, row in enumerate(rows):
        if detect_task(row) != chosen and not (chosen == "acceptable" and "acceptable" in row):
            raise ValueError(f"{path}: record {index + 1} is not a {chosen} record (fields: {sorted(row)})")
    items = [_item(row, chosen, index) for index, row in enumerate(rows)]
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    return items
