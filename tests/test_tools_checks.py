"""Tools on local models, the parts that need no model running: the structural checks a cascade
escalates on, the tool-call event transform (scripted generation events in, OpenAI tool-call
fragments out) and the rendering of tools through the real chat templates in the GGUF files
(SmolLM2-135M's, which has no tool support, and Qwen2.5's, which has)."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from gateway.backends.local.chat_template import ChatTemplate
from gateway.backends.local.source import models_dir, smollm2_gguf
from gateway.backends.local.tool_prompt import probe_tool_support, template_conversation
from gateway.core.backend import ChatMessage, GenerationDone, GenerationEvent, TokenChunk
from gateway.core.structured.checks import structural_problem
from gateway.core.structured.tool_events import with_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & later",
                                            "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


# --- structural checks ------------------------------------------------------------------------


def test_valid_calls_and_plain_answers_pass() -> None:
    auto = {"tools": [WEATHER, TIME]}
    assert structural_problem(auto, "", [call("get_weather", '{"city": "Oslo", "days": 2}')]) is None
    assert structural_problem(auto, "It is sunny.", []) is None  # auto: not calling is an answer
    assert structural_problem(auto, "", [call("get_time", "")]) is None  # "" = no arguments
    assert structural_problem({"tools": [WEATHER], "tool_choice": "none"}, "Hi", []) is None


@pytest.mark.parametrize("extra, content, calls, reason", [
    ({"tools": [WEATHER]}, "", [call("get_wether", '{"city": "Oslo"}')], "unknown tool 'get_wether'"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '{"city": "Oslo"')], "not valid JSON"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '["Oslo"]')], "not a JSON object"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '{"days": 2}')], "'city' is a required property"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '{"city": "Oslo", "days": 0}')], "less than the minimum"),
    ({"tools": [WEATHER]}, '<tool_call>{"name": "get_weather", "arg', [], "malformed <tool_call>"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "Sunny.", [], "none made"),
    ({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "",
     [call("get_weather", '{"city": "Oslo"}')], "tool_choice names 'get_time'"),
    ({"tools": [WEATHER, TIME], "parallel_tool_calls": False}, "",
     [call("get_time", "{}"), call("get_time", "{}")], "parallel_tool_calls is false"),
    ({"tools": [WEATHER], "tool_choice": "none"}, "", [call("get_weather", '{"city": "Oslo"}')],
     "no tools are offered"),
])
def test_invalid_calls_have_a_reason(extra: dict[str, Any], content: str, calls: list[dict[str, Any]],
                                     reason: str) -> None:
    problem = structural_problem(extra, content, calls)
    assert problem is not None and problem.startswith("tool_call: ") and reason in problem


def test_response_format_content() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "minLength": 5}}, "required": ["answer"]}
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}
    assert structural_problem(fmt, '{"answer": "Paris!"}', []) is None
    assert "too short" in (structural_problem(fmt, '{"answer": "x"}', []) or "")
    assert structural_problem(fmt, "Paris", []) == "response_format: the content is not valid JSON"
    json_object = {"response_format": {"type": "json_object"}}
    assert structural_problem(json_object, '{"a": 1}', []) is None
    assert structural_problem(json_object, "[1]", []) == "response_format: the content is not a JSON object"
    assert structural_problem({"response_format": {"type": "text"}}, "anything", []) is None


# --- the event transform ----------------------------------------------------------------------


async def scripted(pieces: list[str], finish: str = "stop") -> AsyncGenerator[GenerationEvent, None]:
    for i, piece in enumerate(pieces):
        yield TokenChunk(text=piece, token_ids=(i,))
    yield GenerationDone(finish, 10, len(pieces), "m")  # type: ignore[arg-type]


def pieces_of(text: str, size: int = 3) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


async def transformed(pieces: list[str], finish: str = "stop", *, parallel: bool = True,
                      names: tuple[str, ...] = ("get_weather", "get_time"),
                      ) -> tuple[str, list[dict[str, Any]], GenerationDone, int]:
    halted: list[bool] = []
    content, done = "", None
    fragments: list[dict[str, Any]] = []
    events = with_tool_calls(scripted(pieces, finish), parallel=parallel, names=names,
                             halt=lambda: halted.append(True))
    async for event in events:
        if isinstance(event, GenerationDone):
            done = event
        else:
            content += event.text
            fragments += event.tool_calls
    assert done is not None
    return content, fragments, done, len(halted)


BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


async def test_calls_become_whole_fragments_and_finish_tool_calls() -> None:
    content, fragments, done, _ = await transformed(pieces_of("\n" + BLOCK + "\n" + BLOCK.replace("Oslo", "Rome")))
    assert content == "" and done.finish_reason == "tool_calls"
    assert [(f["index"], f["function"]["name"], json.loads(f["function"]["arguments"])) for f in fragments] == [
        (0, "get_weather", {"city": "Oslo"}), (1, "get_weather", {"city": "Rome"})]
    assert all(f["id"].startswith("call_") and f["type"] == "function" for f in fragments)
    text, _, plain, _ = await transformed(pieces_of("Sunny in Oslo.\n"))
    assert (text, plain.finish_reason) == ("Sunny in Oslo.\n", "stop")


async def test_repeats_and_parallel_false_end_the_answer() -> None:
    content, fragments, done, halts = await transformed(pieces_of((BLOCK + "\n") * 4))
    assert len(fragments) == 1 and halts == 1 and done.finish_reason == "tool_calls" and content == ""
    two = BLOCK + BLOCK.replace("Oslo", "Rome") + " trailing words"
    _, single, done, halts = await transformed(pieces_of(two), parallel=False)
    assert [f["index"] for f in single] == [0] and halts == 1 and done.finish_reason == "tool_calls"


async def test_bare_json_calls_of_offered_functions() -> None:
    bare = '{"name": "get_time", "arguments": {"zone": "Tokyo"}}'
    content, fragments, done, _ = await transformed(pieces_of(bare))
    assert content == "" and [f["function"]["name"] for f in fragments] == ["get_time"]
    assert done.finish_reason == "tool_calls"
    other = '{"name": "get_date", "arguments": {}}'  # not offered: an ordinary JSON answer
    assert (await transformed(pieces_of(other)))[:2] == (other, [])
    answer = '{"answer": 4}'
    assert (await transformed(pieces_of(answer)))[:2] == (answer, [])
    lines = bare + '\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}'  # several: one per line
    assert [f["function"]["name"] for f in (await transformed(pieces_of(lines)))[1]] == ["get_time", "get_weather"]
    half = bare + '\n{"name": "get_weather", "argu'  # cut off: not calls, the text as it is
    assert (await transformed(pieces_of(half), finish="length"))[:2] == (half, [])


async def test_malformed_or_cut_off_blocks_stay_content() -> None:
    broken = "<tool_call>{name: get_weather}</tool_call>"
    content, fragments, done, _ = await transformed(pieces_of(broken))
    assert (content, fragments, done.finish_reason) == (broken, [], "stop")
    cut = BLOCK[:30]
    content, fragments, done, _ = await transformed(pieces_of(cut), finish="length")
    assert (content, fragments, done.finish_reason) == (cut, [], "length")
    assert structural_problem({"tools": [WEATHER]}, content, []) == "tool_call: a malformed <tool_call> block"


# --- rendering through the real templates -----------------------------------------------------


def gguf_chat_template(path: Path) -> str:
    """``tokenizer.chat_template`` from a GGUF header, read up to that key only (gguf's reader
    parses the whole 150k-token vocabulary first: ~40 s under load)."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with path.open("rb") as f:
        def unpack(fmt: str) -> Any:
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def string() -> str:
            return f.read(unpack("Q")[0]).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == 8:
                f.seek(unpack("Q")[0], 1)
            elif kind == 9:
                item, count = unpack("IQ")
                for _ in range(count if item in (8, 9) else 0):
                    skip(item)
                if item not in (8, 9):
                    f.seek(struct.calcsize("<" + scalar[item]) * count, 1)
            else:
                f.seek(struct.calcsize("<" + scalar[kind]), 1)

        assert f.read(4) == b"GGUF"
        _version, _tensors, entries = unpack("IQQ")
        for _ in range(entries):
            key, kind = string(), unpack("I")[0]
            if key == "tokenizer.chat_template" and kind == 8:
                return string()
            skip(kind)
    raise AssertionError(f"{path} has no chat template")


def template_of(path: Path) -> ChatTemplate:
    return ChatTemplate(gguf_chat_template(path), "<|endoftext|>", "<|im_end|>")


CONVERSATION = [
    ChatMessage(role="user", content="Weather in Oslo and Rome?"),
    ChatMessage(role="assistant", content="", tool_calls=[
        call("get_weather", '{"city": "Oslo"}'), {**call("get_weather", '{"city": "Rome"}'), "id": "call_2"}]),
    ChatMessage(role="tool", content="cold", tool_call_id="call_1"),
    ChatMessage(role="tool", content="warm", tool_call_id="call_2"),
]
RENDERED_CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
RENDERED_RESULTS = "<|im_start|>user\n<tool_response>\ncold\n</tool_response>\n<tool_response>\nwarm\n</tool_response>"


def test_smollm2_template_gets_our_tool_prompt() -> None:
    template = template_of(smollm2_gguf())
    assert (template.tool_support.tools, template.tool_support.tool_calls) == (False, False)
    text = template.render(CONVERSATION, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert json.dumps(WEATHER) in text  # plain json: "<now> & later" not HTML-escaped
    assert "<|im_start|>assistant\n" + RENDERED_CALLS + "<|im_end|>" in text
    assert RENDERED_RESULTS in text and "<|im_start|>tool" not in text
    assert text.endswith("<|im_start|>assistant\n")
    plain = template.render(CONVERSATION[:1])  # no tools: the template's own default system prompt
    assert "SmolLM" in plain and "# Tools" not in plain


def test_qwen_template_renders_tools_itself() -> None:
    path = models_dir() / QWEN
    if not path.exists():
        pytest.skip(f"{QWEN} not fetched (../shared/models/fetch-qwen-pair)")
    template = template_of(path)
    assert (template.tool_support.tools, template.tool_support.tool_calls) == (True, True)
    text = template.render(CONVERSATION, tools=[WEATHER])
    assert "You are Qwen" in text and f"<tools>\n{json.dumps(WEATHER)}\n</tools>" in text
    # arguments reach the template as an object (its `| tojson` prints JSON, not a quoted string)
    assert RENDERED_CALLS in text and RENDERED_RESULTS in text


def test_transformers_rendering_agrees_with_the_gguf_template() -> None:
    """The transformers engine renders through Hugging Face's apply_chat_template with the same
    tool preparation: the same prompt as the llama.cpp engine's sandboxed template."""
    from loadtests.bench_grammar import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        text: str = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        return text

    support = probe_tool_support(render)
    assert support == template_of(smollm2_gguf()).tool_support
    assert render(*template_conversation(CONVERSATION, [WEATHER], support)) == \
        template_of(smollm2_gguf()).render(CONVERSATION, tools=[WEATHER])
