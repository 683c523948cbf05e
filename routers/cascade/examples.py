"""The examples a code request states for its function, and whether an answer's code honours them.

A request to write a function usually shows what it should return: doctest lines
(``>>> add(2, 3)`` then ``5``) or prose (``add(2, 3) == 5``, ``add(2, 3) ➞ 5``, ``add(2, 3) returns
5``). An answer whose function contradicts the request's own examples is wrong whatever the model's
confidence, and checking costs one sandboxed interpreter (~0.1 s), far less than a large model's
answer. That is the cascade's ``structural: python_examples`` check: the code must parse, define
the function (``routers.cascade.code``), and give the stated result for every example it can
evaluate.

What counts as an example, so that a check never fails an answer for the request's prose: a call
of the function the request defines last, every argument a Python literal, and an expected value
that is a literal too. Anything else (``is_happy(a) => False``, ``f(n) = 1 + n / 2``) is not an
example. Results compare as values, lenient where requests are loose: lists and tuples alike,
floats within 1e-6. A request can state a wrong example; a right answer then escalates, which
costs the large model's answer, never quality.

Pure text here except :class:`ExamplesCheck`, which runs the program in
:class:`routers.cascade.sandbox.Sandbox` on a worker thread, never in the gateway's process.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import re
from dataclasses import dataclass, field

from routers.cascade.code import code_span, requested_functions
from routers.cascade.sandbox import Sandbox

MAX_EXAMPLES = 16
# What separates a prose example's call from its expected value, longest first.
SEPARATORS = ("should return", "returns", "# =>", "==>", "=>", "->", "➞", "==", "=")
TRAILING = re.compile(r"[\s.,;]+$")
EXPRESSION_GOES_ON = re.compile(r"\s*[-+*/%<>=!&|^@]")
CLOSING_QUOTES = re.compile("\"\"\"|'''")


@dataclass(frozen=True, slots=True)
class Example:
    call: str  # source of the call, every argument a literal
    expected: str  # repr of the expected value (a literal)


def _literal(source: str) -> tuple[bool, object]:
    try:
        return True, ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _literal_call(source: str, function: str) -> bool:
    """``source`` is exactly one call of ``function`` whose arguments are all literals."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return False
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == function):
        return False
    arguments = [*call.args, *(k.value for k in call.keywords)]
    return all(not isinstance(a, ast.Starred) and _literal(ast.unparse(a))[0] for a in arguments)


def _call_end(text: str, start: int) -> int | None:
    """Index just past the parenthesis closing the one at ``start``, skipping string literals."""
    depth, quote, index = 0, "", start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


def _expected_value(rest: str) -> str | None:
    """The literal after a separator: the longest prefix of the line that is one (a trailing
    comment, full stop or explanation is not part of it)."""
    rest = rest.strip()
    for separator in SEPARATORS:
        if rest.startswith(separator):
            rest = rest[len(separator):].strip()
            break
    else:
        return None
    for end in range(len(rest), 0, -1):
        if end < len(rest) and not (rest[end].isspace() or rest[end] in ".,;#"):
            continue  # the literal must end where a word does: ``""abc"`` is no ``""``
        if EXPRESSION_GOES_ON.match(rest[end:]):
            continue  # ``1 + n / 2``: an expression, not a value
        ok, value = _literal(TRAILING.sub("", rest[:end]))
        if ok:
            return repr(value)
    return None


def _prose_examples(code: str, function: str) -> list[Example]:
    found: list[Example] = []
    for match in re.finditer(rf"(?<![\w.]){re.escape(function)}\s*\(", code):
        line_end = code.find("\n", match.start())
        line = code[match.start(): len(code) if line_end < 0 else line_end]
        end = _call_end(line, line.index("("))
        if end is None or not _literal_call(line[:end], function):
            continue
        expected = _expected_value(line[end:])
        if expected is not None:
            found.append(Example(line[:end].strip(), expected))
    return found


def _before_closing_quotes(want: str) -> str:
    """A doctest's expected output runs to a blank line, so a docstring's closing quotes on the
    next line are part of it; they are not part of the value."""
    match = CLOSING_QUOTES.search(want)
    return (want[:match.start()] if match else want).strip()


def _doctest_examples(code: str, function: str) -> list[Example]:
    found: list[Example] = []
    try:
        parsed = doctest.DocTestParser().get_examples(code)
    except ValueError:  # inconsistent indentation in a docstring
        return found
    for example in parsed:
        call, want = example.source.strip(), _before_closing_quotes(example.want)
        ok, value = _literal(want)
        if not ok:  # the output runs on to prose lines (no blank line after it): its first line
            want = want.split("\n", 1)[0].strip()
            ok, value = _literal(want)
        if ok and want and _literal_call(call, function):
            found.append(Example(call, repr(value)))
    return found


def stated_examples(request_code: str, function: str) -> list[Example]:
    """The examples of ``function`` that ``request_code`` states, doctest lines first, each once."""
    unique: dict[str, Example] = {}
    for example in [*_doctest_examples(request_code, function), *_prose_examples(request_code, function)]:
        unique.setdefault(example.call, example)
    return list(unique.values())[:MAX_EXAMPLES]


CHECKER = '''
import math as _math

def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value

def _same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        return (isinstance(got, (int, float)) and not isinstance(got, bool)
                and _math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    return got == want

_failed = []
for _call, _want in _EXAMPLES:
    try:
        _got = eval(_call)
    except Exception as _error:
        _failed.append(f"{_call} raised {type(_error).__name__}")
        continue
    if not _same(_normal(_got), _normal(_want)):
        _failed.append(f"{_call} gave {_got!r:.80}, expected {_want!r:.80}")
if _failed:
    raise SystemExit(f"{len(_failed)} of {len(_EXAMPLES)} examples fail: {_failed[0]}")
'''


def examples_program(request_code: str, answer_code: str, examples: list[Example]) -> str:
    """The program the sandbox runs: the request's code (its imports and helpers; the answer's
    definition replaces its stub), the answer's code, then every example compared."""
    table = ",\n".join(f"    ({e.call!r}, {e.expected})" for e in examples)
    return f"{request_code.rstrip()}\n{answer_code}\n\n_EXAMPLES = [\n{table},\n]\n{CHECKER}"


@dataclass
class ExamplesCheck:
    """Runs an answer against its request's examples; one per strategy (the sandbox's network
    probe is run once, not per request)."""

    sandbox: Sandbox = field(default_factory=lambda: Sandbox(timeout_s=5.0, memory_bytes=512 << 20))
    _prefix: list[str] | None = None

    def program(self, request_text: str, answer: str) -> str | None:
        """The check's program, or None when the request states no example to check."""
        names = requested_functions(request_text)
        if not names:
            return None
        request_code = code_span(request_text).code
        examples = stated_examples(request_code, names[-1])
        return examples_program(request_code, code_span(answer).code, examples) if examples else None

    def run(self, program: str) -> str | None:
        """None when every example holds, else why not (blocking: call it on a worker thread)."""
        if self._prefix is None:
            self._prefix = self.sandbox.network_prefix()
        result = self.sandbox.run(program, self._prefix)
        return None if result.passed else f"examples: {result.detail or result.status}"

    async def problem(self, request_text: str, answer: str) -> str | None:
        program = self.program(request_text, answer)
        return None if program is None else await asyncio.to_thread(self.run, program)
