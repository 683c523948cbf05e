"""What a code answer looks like: its code block, the tokens inside it, and whether it is
well-formed Python that defines the function the request asked for.

Used by the code scorers (confidence over the code only, not the Markdown fences or the prose
around it) and by a tier's ``structural: python`` check (an answer that does not parse, or that
does not define the requested function, escalates whatever its confidence). Pure functions of
text: no execution here — running code is the sandbox's (``routers.cascade.sandbox``), for the
examples check (``routers.cascade.examples``) and offline grading.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.core.backend import TokenLogprob

# The first fenced block; the info string (``python``, ``py``, nothing) is optional. An answer cut
# off by max_tokens has no closing fence: the block then runs to the end of the text.
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
TRIPLE_QUOTED = re.compile(r'("""|\'\'\')(.*?)(?:\1|\Z)', re.DOTALL)
COPIED_LINE = re.compile(r"^[ \t]*(?:from[ \t].*|import[ \t].*|(?:async[ \t]+)?def[ \t].*)$", re.MULTILINE)
DEF_NAME = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z_][A-Za-z_0-9]*)[ \t]*\(", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class CodeSpan:
    code: str
    start: int  # character offsets of the code inside the answer
    end: int
    fenced: bool


def code_span(answer: str) -> CodeSpan:
    """The answer's first fenced code block, or the whole answer when there is no fence (a model
    answering with bare code)."""
    match = FENCE.search(answer)
    if match is None:
        return CodeSpan(answer, 0, len(answer), False)
    code = match.group(2).rstrip("\n")  # the newline before the closing fence belongs to the fence
    return CodeSpan(code, match.start(2), match.start(2) + len(code), True)


def copied_ranges(code: str) -> list[tuple[int, int]]:
    """Character ranges of the code that are not logic: docstrings and other triple-quoted strings,
    import lines and ``def`` lines. Instruct models restate the prompt's signature and docstring
    before the body; those copied tokens are near-certain and would dilute the body's uncertainty."""
    ranges = [m.span() for m in TRIPLE_QUOTED.finditer(code)]
    ranges += [m.span() for m in COPIED_LINE.finditer(code)]
    return ranges


def code_tokens(tokens: Sequence[TokenLogprob], body_only: bool = True) -> list[TokenLogprob]:
    """The tokens whose text lies in the answer's code block — with ``body_only``, outside its
    docstrings, imports and signatures — : confidence over the function body, not over fences,
    prose or text restated from the prompt. All tokens when nothing is left."""
    answer = "".join(t.token for t in tokens)
    span = code_span(answer)
    if not span.code.strip():
        return list(tokens)
    excluded = [(span.start + a, span.start + b) for a, b in copied_ranges(span.code)] if body_only else []
    inside, offset = [], 0
    for token in tokens:
        end = offset + len(token.token)
        in_code = end > span.start and offset < span.end
        first = offset + len(token.token) - len(token.token.lstrip())  # its first visible character
        copied = any(a <= first < b for a, b in excluded)
        if in_code and not copied and token.token.strip():
            inside.append(token)
        offset = end
    return inside or list(tokens)


def requested_functions(request_text: str) -> list[str]:
    """Function names defined in the request's code (its fenced block, else the whole text); the
    last one is the function to write (HumanEval's prompts define helpers first)."""
    return DEF_NAME.findall(code_span(request_text).code)


def _parses(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return None


def defined_functions(tree: ast.Module) -> set[str]:
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


@dataclass(frozen=True, slots=True)
class Structure:
    ok: bool
    reason: str | None = None  # "no_code" | "syntax" | "missing_function"


def python_structure(answer: str, entry_point: str | None, prompt_code: str = "") -> Structure:
    """Whether the answer's code parses as Python and defines ``entry_point``.

    An answer may restate the whole function (it must then parse alone) or continue the prompt's
    code with the body only (it must parse appended to ``prompt_code``, which then supplies the
    definition)."""
    code = code_span(answer).code
    if not code.strip():
        return Structure(False, "no_code")
    alone = _parses(code)
    if alone is not None:  # a whole program: it must define the function itself
        ok = entry_point is None or entry_point in defined_functions(alone)
        return Structure(True) if ok else Structure(False, "missing_function")
    # Not a program alone: a body continuing the prompt's definition (indented code).
    if prompt_code and _parses(prompt_code.rstrip("\n") + "\n" + code) is not None:
        return Structure(True)
    return Structure(False, "syntax")


def request_structure(request_text: str, answer: str) -> Structure:
    """The runtime check: the request's last defined function is the one the answer must define
    (none in the request: only "parses" is checked)."""
    names = requested_functions(request_text)
    prompt_code = code_span(request_text).code if names else ""
    return python_structure(answer, names[-1] if names else None, prompt_code)
