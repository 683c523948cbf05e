"""A model's tool calls in its text, as OpenAI ``tool_calls``.

Qwen2.5 and Hermes-style templates have the model write each call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the format the local backends'
tool prompt and the ``tool_choice`` grammar use too); SmolLM2-1.7B's model-card tool prompt asks
for a list inside one block (``<tool_call>[{...}, {...}]</tool_call>``). Both are read here, with
``arguments`` as an object or a JSON string (``parameters`` is accepted for it too). Text
outside the blocks is the message content. :class:`ToolCallStream` does the same on a stream:
text that may be the start of a block is held back, and each call is emitted whole (one
fragment with id, name and arguments: a valid OpenAI stream) when its block closes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI carries it
    id: str

    def fragment(self, index: int) -> dict[str, Any]:
        return {"index": index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def _new_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def calls_in_block(body: str) -> list[ToolCall] | None:
    """The calls one block holds, or None when it is not well-formed JSON of a call."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False), _new_id()))
    return calls


def bare_calls(text: str, names: Collection[str]) -> list[ToolCall] | None:
    """The calls in ``text`` written without the block markers: the whole text is call objects (or
    lists of them, one per line for several) of functions in ``names``, with ``arguments``; else
    None. Qwen2.5-Coder often answers so; requiring an offered name and the arguments key keeps a
    JSON answer that is not a call from being read as one."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    position, body = 0, text.strip()
    while position < len(body):
        try:
            value, end = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            return None
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, dict) and item.get("name") in names
                                and ("arguments" in item or "parameters" in item) for item in items):
            return None
        parsed = calls_in_block(body[position:end])
        if parsed is None:
            return None
        calls.extend(parsed)
        position = end
        while position < len(body) and body[position].isspace():
            position += 1
    return calls or None


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], bool]:
    """(content, calls, well_formed): blocks that do not parse stay in the content and clear
    ``well_formed`` (a cascade escalates such an answer)."""
    calls: list[ToolCall] = []
    content: list[str] = []
    well_formed = True
    position = 0
    for match in _BLOCK.finditer(text):
        parsed = calls_in_block(match.group(1).strip())
        content.append(text[position:match.start()])
        if parsed is None:
            well_formed = False
            content.append(match.group(0))
        else:
            calls.extend(parsed)
        position = match.end()
    tail = text[position:]
    if OPEN in tail:  # an unclosed block: the model stopped mid-call
        well_formed = False
    content.append(tail)
    return "".join(content).strip() if calls else "".join(content), calls, well_formed


class ToolCallStream:
    """Streamed text in, (content text, whole tool-call fragments) out."""

    def __init__(self) -> None:
        self._pending = ""
        self._in_block = False
        self.calls: list[ToolCall] = []
        self.well_formed = True

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self._pending += text
        content: list[str] = []
        fragments: list[dict[str, Any]] = []
        while True:
            if self._in_block:
                end = self._pending.find(CLOSE)
                if end < 0:
                    break
                parsed = calls_in_block(self._pending[:end].strip())
                if parsed is None:
                    self.well_formed = False
                    content.append(OPEN + self._pending[:end + len(CLOSE)])
                else:
                    for call in parsed:
                        fragments.append(call.fragment(len(self.calls)))
                        self.calls.append(call)
                self._pending = self._pending[end + len(CLOSE):]
                self._in_block = False
                continue
            start = self._pending.find(OPEN)
            if start >= 0:
                content.append(self._pending[:start])
                self._pending = self._pending[start + len(OPEN):]
                self._in_block = True
                continue
            keep = _partial_open(self._pending)  # a block may be starting: hold it back
            content.append(self._pending[:len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep:]
            break
        return "".join(content), fragments

    def flush(self) -> str:
        """What is held back once the stream ended (an unclosed block is content, malformed)."""
        rest, self._pending = self._pending, ""
        if self._in_block:
            self.well_formed = False
            return OPEN + rest
        return rest


def _partial_open(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``<tool_call>``."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


def merge_tool_fragments(calls: list[dict[str, Any]], fragments: Sequence[dict[str, Any]]) -> None:
    """Fold OpenAI's streamed tool-call fragments into whole calls (by their ``index``)."""
    for fragment in fragments:
        index = int(fragment.get("index", len(calls)))
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        for key, value in fragment.items():
            if key == "index" or value is None:
                continue
            if key == "function" and isinstance(value, dict):
                function = call.setdefault("function", {})
                if value.get("name"):
                    function["name"] = function.get("name", "") + str(value["name"])
                if value.get("arguments"):
                    function["arguments"] = function.get("arguments", "") + str(value["arguments"])
                function.update({k: v for k, v in value.items() if k not in ("name", "arguments")})
            else:
                call[key] = value


def invalid_arguments(call: ToolCall, tools: list[dict[str, Any]]) -> str | None:
    """Why ``call`` does not fit the offered tools (unknown name, arguments against the function's
    JSON schema), or None when it does."""
    import jsonschema

    functions = {t["function"]["name"]: t["function"] for t in tools
                 if t.get("type") == "function" and isinstance(t.get("function"), dict)}
    function = functions.get(call.name)
    if function is None:
        return f"unknown tool {call.name!r}"
    schema = function.get("parameters") or {"type": "object"}
    try:
        jsonschema.validate(json.loads(call.arguments), schema)
    except jsonschema.ValidationError as exc:
        return f"arguments of {call.name!r}: {exc.message}"
    except jsonschema.SchemaError as exc:
        return f"tool {call.name!r} has an invalid schema: {exc.message}"
    return None
