"""Tool-call parsing (whole text and streamed) and grammar compilation with llguidance on
SmolLM2's real tokenizer: a well-formed call is accepted token by token, a wrong one is not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.core.errors import InvalidRequestError
from gateway.core.structured.grammar import GrammarCompiler, grammar_for
from gateway.core.structured.tool_calls import ToolCallStream, invalid_arguments, parse_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def test_qwen_and_smollm2_formats_parse() -> None:
    text = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    content, calls, ok = parse_tool_calls(text)
    assert (content, [(c.name, json.loads(c.arguments)) for c in calls], ok) == (
        "Sure.", [("get_weather", {"city": "Oslo"})], True)
    _, listed, ok = parse_tool_calls('<tool_call>[{"name": "get_time", "arguments": "{}"}, '
                                     '{"name": "get_weather", "parameters": {"city": "Rome"}}]</tool_call>')
    assert [c.name for c in listed] == ["get_time", "get_weather"] and ok
    content, none, ok = parse_tool_calls("<tool_call>{not json}</tool_call>")
    assert none == [] and not ok and content == "<tool_call>{not json}</tool_call>"
    assert not parse_tool_calls('<tool_call>{"name": "x"')[2]  # stopped mid-call


def test_streamed_blocks_are_held_back_and_emitted_whole() -> None:
    stream = ToolCallStream()
    text = 'Hi <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call> bye'
    content, fragments = "", []
    for start in range(0, len(text), 3):
        piece, found = stream.feed(text[start:start + 3])
        content += piece
        fragments += found
    content += stream.flush()
    assert content == "Hi  bye" and stream.well_formed
    assert [(f["index"], f["function"]["name"]) for f in fragments] == [(0, "get_weather")]
    assert fragments[0]["id"].startswith("call_")


def test_arguments_are_checked_against_the_function_schema() -> None:
    _, calls, _ = parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": {"days": 2}}</tool_call>'
                                   '<tool_call>{"name": "nope", "arguments": {}}</tool_call>')
    assert "city" in (invalid_arguments(calls[0], [WEATHER]) or "")
    assert invalid_arguments(calls[1], [WEATHER]) == "unknown tool 'nope'"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import llguidance.hf

    from loadtests.bench_grammar import smollm2_tokenizer

    hf = smollm2_tokenizer()
    return hf, llguidance.hf.from_tokenizer(hf)


def _accepts(tokenizer: Any, grammar: str, text: str) -> bool:
    hf, lltok = tokenizer
    constraint = GrammarCompiler(lambda: lltok, lltok.vocab_size).constraint(grammar)
    for token in hf.encode(text, add_special_tokens=False):
        if not constraint.allowed()[token] or not constraint.advance(token):
            return False
    return constraint.finished


def test_required_and_named_tool_choice_grammars(tokenizer: Any) -> None:
    required = grammar_for({"tools": [WEATHER, TIME], "tool_choice": "required"})
    assert required is not None
    oslo = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert _accepts(tokenizer, required, oslo)
    assert _accepts(tokenizer, required, '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
                                         '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    assert not _accepts(tokenizer, required, '<tool_call>{"name": "get_weather", "arguments": {"days": 1}}</tool_call>')
    # One layout (gateway.core.structured.grammar.JSON_LAYOUT): no free whitespace to pad with.
    assert not _accepts(tokenizer, required, '<tool_call>{"name":"get_time","arguments":{}}</tool_call>')
    named = grammar_for({"tools": [WEATHER, TIME], "tool_choice": {"type": "function",
                                                                  "function": {"name": "get_time"}}})
    assert named is not None
    assert not _accepts(tokenizer, named, '<tool_call>{"name": "get_weather", "arguments": {"city": "x"}}</tool_call>')
    assert grammar_for({"tools": [WEATHER], "tool_choice": "auto"}) is None
    with pytest.raises(InvalidRequestError):
        grammar_for({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "missing"}}})


def test_response_format_grammars(tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
              "required": ["answer", "score"], "additionalProperties": False}
    grammar = grammar_for({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
    assert grammar is not None
    assert _accepts(tokenizer, grammar, '{"answer": "Paris", "score": 3}')
    assert not _accepts(tokenizer, grammar, '{"answer": "Paris"}')
    any_object = grammar_for({"response_format": {"type": "json_object"}})
    assert any_object is not None and _accepts(tokenizer, any_object, '{"a": [1, 2]}')
    assert grammar_for({"response_format": {"type": "text"}}) is None


def test_auto_tool_choice_with_a_response_format_allows_a_call_or_the_formatted_answer(tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    for choice in ("auto", None):
        extra: dict[str, Any] = {"tools": [WEATHER], "response_format": fmt}
        if choice is not None:
            extra["tool_choice"] = choice
        grammar = grammar_for(extra)
        assert grammar is not None
        assert _accepts(tokenizer, grammar, '{"answer": "Paris"}')
        assert _accepts(tokenizer, grammar, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                            '</tool_call>')
        assert not _accepts(tokenizer, grammar, '{"reply": "Paris"}')
        assert not _accepts(tokenizer, grammar, "Paris")
    # tool_choice none: the tools are not shown, the answer follows the format only.
    only_format = grammar_for({"tools": [WEATHER], "tool_choice": "none", "response_format": fmt})
    assert only_format is not None
    assert not _accepts(tokenizer, only_format, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                                '</tool_call>')
