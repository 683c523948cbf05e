"""Judges that compare the two answers themselves: ``exact``, ``normalized``, ``json``."""

from __future__ import annotations

import math
import re
import string
from typing import Any

import orjson

from gateway.core.strategy import ChatRequestView, RequestContext
from routers.cascade.selfcal.config import ExactJudge, JsonJudge, NormalizedJudge
from routers.cascade.selfcal.judges.base import Answer, Judge, Verdict

# A whole answer that is a choice letter: "B", "(B)", "B.", "B) Paris", "Answer: B", "The answer is B".
_LETTER_ANSWER = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?\s*[:\-]?\s*)?\(?([A-J])\)?(?:[.):](?:\s.*)?)?\s*$",
    re.IGNORECASE | re.DOTALL)
# A letter named as the choice inside a longer answer ("... so the answer is (C).").
_LETTER_NAMED = re.compile(r"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\(?([A-J])\)?(?![A-Za-z])")
_LETTER_ALONE = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
SHORT_ANSWER_WORDS = 8  # auto mode compares numbers only in answers this short ("The answer is 42.")


class ExactMatch(Judge):
    type = "exact"

    def __init__(self, config: ExactJudge) -> None:
        self.config = config

    async def judge(self, request: ChatRequestView, small: Answer, large: Answer, ctx: RequestContext) -> Verdict:
        a, b = small.as_text(), large.as_text()
        if self.config.strip:
            a, b = a.strip(), b.strip()
        return Verdict(a == b)


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def choice_letter(text: str, *, strict: bool) -> str | None:
    """The answer's choice letter; ``strict``: only when the whole answer is a letter answer."""
    found = _LETTER_ANSWER.match(text)
    if found is None and not strict:
        found = _LETTER_NAMED.search(text) or _LETTER_ALONE.search(text)
    return found.group(1).upper() if found else None


def last_number(text: str) -> float | None:
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


class NormalizedMatch(Judge):
    type = "normalized"

    def __init__(self, config: NormalizedJudge) -> None:
        self.config = config

    async def judge(self, request: ChatRequestView, small: Answer, large: Answer, ctx: RequestContext) -> Verdict:
        a, b = small.as_text(), large.as_text()
        mode = self.config.extract
        if mode in ("auto", "letter"):
            letters = choice_letter(a, strict=mode == "auto"), choice_letter(b, strict=mode == "auto")
            if letters[0] is not None and letters[1] is not None:
                return Verdict(letters[0] == letters[1], {"compared": "letter", "small": letters[0],
                                                          "large": letters[1]})
        if mode in ("auto", "number") and (mode == "number" or (_short(a) and _short(b))):
            numbers = last_number(a), last_number(b)
            if numbers[0] is not None and numbers[1] is not None:
                same = math.isclose(numbers[0], numbers[1], rel_tol=self.config.number_tolerance, abs_tol=0.0)
                return Verdict(same, {"compared": "number", "small": numbers[0], "large": numbers[1]})
        return Verdict(normalize_text(a) == normalize_text(b), {"compared": "text"})


def _short(text: str) -> bool:
    return len(text.split()) <= SHORT_ANSWER_WORDS


class JsonMatch(Judge):
    type = "json"

    def __init__(self, config: JsonJudge) -> None:
        self.config = config
        self.ignore = frozenset(config.ignore_keys)

    async def judge(self, request: ChatRequestView, small: Answer, large: Answer, ctx: RequestContext) -> Verdict:
        if small.tool_calls or large.tool_calls:
            same = len(small.tool_calls) == len(large.tool_calls) and all(
                self._same_call(a, b) for a, b in zip(small.tool_calls, large.tool_calls, strict=True))
            return Verdict(same, {"compared": "tool_calls"})
        values = parse_json_answer(small.text), parse_json_answer(large.text)
        if values[0] is None or values[1] is None:
            return Verdict(False, {"compared": "json", "unparsed": [v is None for v in values]})
        return Verdict(self._equal(values[0][0], values[1][0]), {"compared": "json"})

    def _same_call(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        fa, fb = a.get("function", {}), b.get("function", {})
        if fa.get("name") != fb.get("name"):
            return False
        args = parse_json_answer(str(fa.get("arguments") or "{}")), parse_json_answer(str(fb.get("arguments") or "{}"))
        if args[0] is None or args[1] is None:
            return bool(fa.get("arguments") == fb.get("arguments"))
        return self._equal(args[0][0], args[1][0])

    def _equal(self, a: Any, b: Any) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            keys_a, keys_b = a.keys() - self.ignore, b.keys() - self.ignore
            return keys_a == keys_b and all(self._equal(a[k], b[k]) for k in keys_a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(self._equal(x, y) for x, y in zip(a, b, strict=True))
        if _is_number(a) and _is_number(b):
            return math.isclose(a, b, rel_tol=self.config.number_tolerance, abs_tol=0.0) or a == b
        return type(a) is type(b) and bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_json_answer(text: str) -> tuple[Any] | None:
    """The JSON value an answer holds (``(value,)``; None when it holds none): the whole text,
    the inside of a Markdown code fence, or the outermost object/array in it."""
    stripped = text.strip()
    if stripped.startswith("```"):
        body = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = body.rsplit("```", 1)[0].strip()
    for candidate in (stripped, _outermost(stripped)):
        if not candidate:
            continue
        try:
            return (orjson.loads(candidate),)
        except orjson.JSONDecodeError:
            continue
    return None


def _outermost(text: str) -> str:
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return ""
    start = min(starts)
    end = text.rfind("}" if text[start] == "{" else "]")
    return text[start:end + 1] if end > start else ""
