"""Grammars for constrained decoding, compiled with llguidance (docs/benchmarks.md: why).

* ``response_format`` ``json_schema`` -> that schema; ``json_object`` -> any JSON object;
* ``tool_choice`` ``required`` / a named function -> one ``<tool_call>{"name", "arguments"}
  </tool_call>`` block (or several, with ``parallel_tool_calls``), whose arguments follow the
  function's ``parameters`` schema, in the format :mod:`gateway.structured.tool_calls` reads.

:func:`grammar_for` gives llguidance's grammar text (None: nothing to constrain);
:class:`Constraint` is the per-request object a decoding loop asks for the allowed-token
bitmask and advances by the sampled token. The tokenizer it needs comes from the engine
(llguidance builds one from a Hugging Face tokenizer or a llama.cpp vocabulary).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.core.errors import InvalidRequestError

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _json_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    try:
        grammar: str = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "coerce_one_of": True})
    except ValueError as exc:
        raise InvalidRequestError(f"the JSON schema cannot be enforced: {exc}", param="response_format") from None
    return grammar


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
    return options[0] if len(options) == 1 else {"anyOf": options}


def grammar_for(params_extra: dict[str, Any]) -> str | None:
    """The grammar a request's ``response_format`` / ``tool_choice`` asks for, or None."""
    choice = params_extra.get("tool_choice")
    tools = params_extra.get("tools") or []
    if tools and (choice == "required" or isinstance(choice, dict)):
        name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        call = json.dumps(_call_schema(tools, name))
        many = params_extra.get("parallel_tool_calls") is not False and name is None
        block = f'"<tool_call>" %json {call} "</tool_call>"'
        return f"start: {block}" + (f' ("\\n" {block})*' if many else "")
    fmt = params_extra.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return _json_grammar((fmt.get("json_schema") or {}).get("schema") or ANY_OBJECT)
    if fmt.get("type") == "json_object":
        return _json_grammar(ANY_OBJECT)
    return None


class Constraint:
    """One request's grammar state: ask for the mask, advance by the sampled token."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        import llguidance
        import llguidance.numpy

        self._numpy = llguidance.numpy
        self.matcher = llguidance.LLMatcher(tokenizer, grammar)
        if self.matcher.is_error():
            raise InvalidRequestError(f"the grammar cannot be enforced: {self.matcher.get_error()}",
                                      param="response_format")
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, tokenizer.vocab_size)

    def allowed(self) -> Any:
        """The allowed-token bitmask (int32 words, bit i = token i) for the next token."""
        self._numpy.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        return self.bitmask

    def advance(self, token_id: int) -> bool:
        return bool(self.matcher.consume_token(token_id))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_stopped() or self.matcher.is_accepting())
