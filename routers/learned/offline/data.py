"""Labelled routing data: one JSON object per line with ``question``, ``weak_correct``, ``strong_correct``.

The files in ``/work/shared/data/*/dev.jsonl`` are accepted as they are. MMLU rows also have
``choices``; they are part of what a user would send, so they are part of the embedded text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
LabelRule = Literal["strong_only", "weak_wrong"]
LETTERS = "ABCDEFGHIJ"


def request_text(row: dict[str, Any]) -> str:
    """What the user turn of this question would contain (question, then lettered choices)."""
    text = str(row["question"]).strip()
    choices = row.get("choices")
    if choices:
        text += "\n" + "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return text


@dataclass(frozen=True)
class LabelledSet:
    texts: list[str]
    weak_correct: BoolArray
    strong_correct: BoolArray
    groups: list[str]  # MMLU subject, or "" (used for cross-subject folds)

    def __len__(self) -> int:
        return len(self.texts)

    def labels(self, rule: LabelRule = "strong_only") -> BoolArray:
        """Positive = "route this to the strong model".

        ``strong_only`` (default): strong right and weak wrong — the only rows where paying for
        the strong model changes the outcome. ``weak_wrong`` also counts rows both get wrong,
        where escalation buys nothing.
        """
        if rule == "strong_only":
            return self.strong_correct & ~self.weak_correct
        return ~self.weak_correct

    def subset(self, index: npt.NDArray[np.intp]) -> LabelledSet:
        return LabelledSet(
            [self.texts[i] for i in index], self.weak_correct[index], self.strong_correct[index],
            [self.groups[i] for i in index],
        )


def load_labelled(path: Path) -> LabelledSet:
    texts: list[str] = []
    weak: list[bool] = []
    strong: list[bool] = []
    groups: list[str] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts.append(request_text(row))
                weak.append(bool(row["weak_correct"]))
                strong.append(bool(row["strong_correct"]))
            except (KeyError, TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}:{number}: not a labelled record ({exc!r})") from None
            groups.append(str(row.get("subject", "")))
    if not texts:
        raise ValueError(f"{path}: no records")
    return LabelledSet(texts, np.array(weak, dtype=bool), np.array(strong, dtype=bool), groups)
