"""Grammars for constrained decoding, compiled with llguidance (docs/benchmarks.md: why).

* ``response_format`` ``json_schema`` -> that schema; ``json_object`` -> any JSON object;
* ``tool_choice`` ``required`` / a named function -> one ``<tool_call>{"name", "arguments"}
  </tool_call>`` block (or several, with ``parallel_tool_calls``), whose arguments follow the
  function's ``parameters`` schema, in the format :mod:`gateway.core.structured.tool_calls` reads.

:func:`grammar_for` gives llguidance's grammar text (None: nothing to constrain). A
:class:`GrammarCompiler` (one per model: it holds the model's llguidance tokenizer) turns the
text into a :class:`Constraint`, the per-sequence object a decoding loop asks for the allowed
tokens and advances by the chosen one. Compiled grammars are kept in a bounded LRU, so the
schema an agent sends with every request is compiled once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gateway.core.errors import InvalidRequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

ANY_OBJECT: dict[str, Any] = {"type": "object"}
# Resource bounds for one grammar (llguidance's LLParserLimits: its defaults, but 100k lexer
# states rather than 250k, ~1-2 kB each). "fuel" is work: ~50k units per ms for the lexer build,
# so its part of a compile stays near 20 ms, and ~14k per ms for one token's mask (~15 ms at
# most); a grammar that needs more is refused (400) instead of stalling the engine. These do
# not bound everything a compile does: GrammarCompiler times it too.
INITIAL_LEXER_FUEL, STEP_LEXER_FUEL = 1_000_000, 200_000
MAX_GRAMMAR_SIZE, MAX_LEXER_STATES = 500_000, 100_000
TOOL_MARKER_RULES = (("tool_open", "<tool_call>"), ("tool_close", "</tool_call>"))
MAX_SCHEMA_CHARS = 100_000  # a longer schema is refused before llguidance sees it
# How constrained JSON is laid out. Fixed separators: a small model given free whitespace may
# pad forever instead of closing. ", " and ": " (json.dumps's own) rather than none: SmolLM2
# forced to write compact JSON drifted off its training distribution (runaway digit strings
# in 3 of 9 answers measured, none with the spaces).
JSON_LAYOUT: JsonCompileOptions = {"whitespace_flexible": False, "coerce_one_of": True,
                                   "item_separator": ", ", "key_separator": ": "}


def _limits() -> Any:
    import llguidance

    return llguidance.LLParserLimits(initial_lexer_fuel=INITIAL_LEXER_FUEL, step_lexer_fuel=STEP_LEXER_FUEL,
                                     max_grammar_size=MAX_GRAMMAR_SIZE, max_lexer_states=MAX_LEXER_STATES)


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        size = len(json.dumps(schema))
    except (RecursionError, ValueError):  # nested deeper than Python's recursion limit, or circular
        raise InvalidRequestError("the JSON schema is nested too deeply", param="response_format") from None
    if size > MAX_SCHEMA_CHARS:
        raise InvalidRequestError(f"the JSON schema is longer than {MAX_SCHEMA_CHARS} characters",
                                  param="response_format")


def _json_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    _check_schema(schema)
    try:
        grammar: str = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    except ValueError as exc:
        raise InvalidRequestError(f"the JSON schema cannot be enforced: {exc}", param="response_format") from None
    return grammar


def _format_schema(params_extra: dict[str, Any]) -> dict[str, Any] | None:
    """The schema ``response_format`` asks the answer to follow, or None (free text)."""
    fmt = params_extra.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema: dict[str, Any] = (fmt.get("json_schema") or {}).get("schema") or ANY_OBJECT
        return schema
    if fmt.get("type") == "json_object":
        return ANY_OBJECT
    return None


def _call_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    options = []
    for tool in tools:
        function = tool.get("function") or {}
        if tool.get("type") != "function" or (name is not None and function.get("name") != name):
            continue
        options.append({"type": "object", "properties": {
            "name": {"const": function["name"]}, "arguments": function.get("parameters") or ANY_OBJECT},
            "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise InvalidRequestError(f"tool_choice names a function that is not among the tools: {name!r}",
                                  param="tool_choice")
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_LAYOUT}  # the layout of response_format's JSON, in a call


def forces_tool_call(params_extra: dict[str, Any]) -> bool:
    """``tool_choice`` ``required`` or a named function, with tools offered."""
    choice = params_extra.get("tool_choice")
    return bool(params_extra.get("tools")) and (choice == "required" or isinstance(choice, dict))


def grammar_param(params_extra: dict[str, Any]) -> str:
    """The request parameter a grammar error is about (the 400's ``param``)."""
    return "tools" if forces_tool_call(params_extra) else "response_format"


def _call_rules(tools: list[dict[str, Any]], name: str | None) -> tuple[str, ...]:
    """The ``call`` rule: one ``<tool_call>`` block whose JSON is a call of one of ``tools``.
    The markers are rules of their own so that a tokenizer with ``<tool_call>`` as one special
    token (Qwen2.5) can have them rewritten to that token (:func:`_for_tokenizer`)."""
    call = json.dumps(_call_schema(tools, name))
    return (f"call: tool_open %json {call} tool_close",
            *(f'{rule}: "{marker}"' for rule, marker in TOOL_MARKER_RULES))


def grammar_for(params_extra: dict[str, Any]) -> str | None:
    """The grammar a request's ``response_format`` / ``tool_choice`` asks for, or None."""
    choice = params_extra.get("tool_choice")
    tools = params_extra.get("tools") or []
    many = params_extra.get("parallel_tool_calls") is not False
    calls = 'call ("\\n" call)*' if many else "call"
    if forces_tool_call(params_extra):
        name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        return "\n".join((f"start: {calls if name is None else 'call'}", *_call_rules(tools, name)))
    schema = _format_schema(params_extra)
    if schema is None:
        return None
    if choice in (None, "auto") and any(tool.get("type") == "function" for tool in tools):
        # OpenAI's "auto" with a response_format: the model may call tools, or answer in the format.
        _check_schema(schema)
        answer = json.dumps({**schema, "x-guidance": JSON_LAYOUT})
        return "\n".join((f"start: answer | {calls}", f"answer: %json {answer}", *_call_rules(tools, None)))
    return _json_grammar(schema)


class Constraint:
    """One sequence's grammar state: the allowed next tokens, advanced by the chosen one."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        import llguidance.numpy

        self._numpy = llguidance.numpy
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Which of the ``vocab_size`` tokens may come next (EOS only once the grammar accepts)."""
        self._numpy.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little", count=self.vocab_size)
        mask: npt.NDArray[np.bool_] = bits.view(np.bool_)
        return mask

    def advance(self, token_id: int) -> bool:
        """Consume the chosen token; False when the grammar rejects it (the matcher is then in
        error for good: ask :meth:`allowed` first where a token may be wrong)."""
        return bool(self.matcher.consume_token(token_id))

    def rollback(self, tokens: int) -> None:
        """Undo the last ``tokens`` advances (speculative drafts the target did not keep)."""
        if tokens and not self.matcher.rollback(tokens):
            raise RuntimeError(f"the grammar could not roll back {tokens} token(s): {self.error}")

    @property
    def stopped(self) -> bool:
        """Nothing but EOS may follow: the document is complete."""
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

    @property
    def finished(self) -> bool:
        return self.stopped or self.accepting

    @property
    def error(self) -> str | None:
        return str(self.matcher.get_error()) if self.matcher.is_error() else None


class GrammarCompiler:
    """One model's grammars: its llguidance tokenizer (built on first use: ~1-2 s for a 50k
    vocabulary) and a bounded LRU of compiled grammars. Thread-safe; compiling drops the GIL,
    so callers run :meth:`constraint` off the event loop.

    llguidance's resource limits do not bound every schema's compile (many optional properties
    grow it quadratically: 3000 take ~2 s), so a compile slower than ``max_compile_s`` is
    refused, and refusals are cached like results: a pathological schema costs one compile,
    however often it is sent. Concurrent requests for one grammar share one compile.
    """

    def __init__(self, build_tokenizer: Callable[[], Any], vocab_size: int, capacity: int = 64,
                 max_compile_s: float = 5.0) -> None:
        self._build_tokenizer = build_tokenizer
        self.vocab_size = vocab_size
        self.capacity = capacity
        self.max_compile_s = max_compile_s
        self._tokenizer: Any = None
        self._compiled: OrderedDict[str, Future[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0  # grammars compiled (cache misses): tests and the benchmark read it

    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._build_tokenizer()
            return self._tokenizer

    def cached(self, grammar: str) -> bool:
        with self._lock:
            return grammar in self._compiled

    def constraint(self, grammar: str, param: str = "response_format") -> Constraint:
        """A fresh constraint for one sequence; a grammar llguidance refuses (unsupported
        keyword, over the resource limits, too slow to compile) is a 400 on ``param``."""
        tokenizer = self.tokenizer()
        with self._lock:
            entry = self._compiled.get(grammar)
            owner = entry is None
            if entry is None:
                entry = self._compiled[grammar] = Future()
                while len(self._compiled) > self.capacity:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(grammar)
        if owner:
            try:
                entry.set_result(self._compile(tokenizer, grammar, param))
            except InvalidRequestError as exc:
                entry.set_exception(exc)
        try:
            template = entry.result(timeout=self.max_compile_s)  # another thread's compile: wait as long
        except FutureTimeout:
            raise InvalidRequestError(f"the schema did not compile within {self.max_compile_s:g} s: simplify "
                                      "it (fewer optional properties or alternatives)", param=param) from None
        # A copy shares the compiled lexer and grammar; only the parse state is per sequence.
        return Constraint(template.deep_copy(), self.vocab_size)

    def _compile(self, tokenizer: Any, grammar: str, param: str) -> Any:
        import llguidance

        started = time.perf_counter()
        matcher = llguidance.LLMatcher(tokenizer, _for_tokenizer(tokenizer, grammar), log_level=0, limits=_limits())
        seconds = time.perf_counter() - started
        with self._lock:
            self.compiles += 1
        if matcher.is_error():
            raise InvalidRequestError(f"the grammar cannot be enforced: {matcher.get_error()}", param=param)
        if seconds > self.max_compile_s:
            raise InvalidRequestError(f"the schema took {seconds:.1f} s to compile (limit {self.max_compile_s:g} s): "
                                      "simplify it (fewer optional properties or alternatives)", param=param)
        return matcher


def _for_tokenizer(tokenizer: Any, grammar: str) -> str:
    """``grammar`` with each tool-call marker rule rewritten to the special token, where the
    vocabulary has the marker as one special token: the model writes that token, and llguidance
    matches a special token only by its ``<name>`` reference, never as the quoted text."""
    for rule, marker in TOOL_MARKER_RULES:
        line = f'\n{rule}: "{marker}"'  # a line of its own: never text inside a %json schema
        if line not in grammar:
            continue
        ids = tokenizer.tokenize_str(marker)
        if len(ids) == 1 and tokenizer.is_special_token(ids[0]):
            grammar = grammar.replace(line, f"\n{rule}: {marker}")
    return grammar


async def compile_constraint(compiler: GrammarCompiler, params_extra: dict[str, Any]) -> Constraint | None:
    """The constraint a request's ``response_format`` / forced tool call puts on its answer,
    compiled off the event loop (None: unconstrained). An unenforceable or too slow schema is
    a 400, before any model runs."""
    grammar = grammar_for(params_extra)
    if grammar is None:
        return None
    param = grammar_param(params_extra)
    await asyncio.to_thread(compiler.tokenizer)  # built once per model (~1-2 s): not part of the bound
    try:
        # The request waits no longer than the compiler's limit; a compile still running then
        # ends in the cache as a refusal (GrammarCompiler), so it runs once.
        return await asyncio.wait_for(asyncio.to_thread(compiler.constraint, grammar, param),
                                      compiler.max_compile_s)
    except TimeoutError:
        raise InvalidRequestError(f"the schema did not compile within {compiler.max_compile_s:g} s: "
                                  "simplify it (fewer optional properties or alternatives)", param=param) from None
