"""Labelled evaluation data for cascades: multiple-choice questions with a gold letter
(``../shared/data/mmlu/dev.jsonl``), or records that say whether an answer was acceptable.

A record is either ``{"question", "choices": [4 strings], "answer": "A".."D"}`` (scored by the
letter the model answers) or ``{"messages" | "question", "acceptable": [strings]}`` (an answer is
correct when it contains one of them, case-insensitively).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.backend import ChatMessage

LETTERS = "ABCD"
LETTER_PATTERN = re.compile(r"\b([ABCD])\b")
INSTRUCTION = "Answer the following multiple choice question with the letter of the correct option only."
# Without it the Qwen2.5-Coder models begin to reason ("To determine ...") on a quarter to half of
# the questions and reach max_tokens before any letter; with it, none did in a 40-question sample
# (0.5B: 6/40 without a letter -> 0; accuracy 0.23 -> 0.35).
SYSTEM = ("You answer multiple-choice questions. Reply with the letter of the correct option (A, B, C or D) "
          "and nothing else.")


@dataclass(frozen=True, slots=True)
class LabelledItem:
    messages: list[ChatMessage]
    gold: str
    multiple_choice: bool
    acceptable: tuple[str, ...] = ()

    def is_correct(self, answer: str) -> bool:
        if self.multiple_choice:
            return answer_letter(answer) == self.gold
        lowered = answer.lower()
        return any(option.lower() in lowered for option in self.acceptable)


def answer_letter(answer: str) -> str | None:
    match = LETTER_PATTERN.search(answer.strip()[:40])
    return match.group(1) if match else None


def _item(row: dict[str, Any]) -> LabelledItem:
    if "choices" in row and "answer" in row:
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"], strict=False))
        prompt = f"{INSTRUCTION}\n\n{row['question']}\n{options}\nAnswer:"
        system, user = ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=prompt)
        return LabelledItem([system, user], str(row["answer"]).strip().upper(), True)
    if "acceptable" in row:
        given = row.get("messages") or [{"role": "user", "content": row["question"]}]
        return LabelledItem([ChatMessage(**m) for m in given], "", False, tuple(row["acceptable"]))
    raise ValueError("each record needs question+choices+answer (multiple choice) or acceptable answers")


def load_labelled(path: Path, limit: int | None = None, seed: int = 0) -> list[LabelledItem]:
    """Records of ``path``; with ``limit``, a seeded random sample (the files are sorted by subject)."""
    with path.open() as handle:
        items = [_item(json.loads(line)) for line in handle if line.strip()]
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    return items
