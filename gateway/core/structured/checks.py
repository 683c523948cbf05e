"""Whether an answer honours its request's ``tools`` and ``response_format``.

Pure functions over the request's fields as the client sent them (``SamplingParams.extra``:
``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format``) and the answer in
OpenAI's shape (content text, ``tool_calls`` with JSON-text arguments), from any backend. A
cascade escalates a small-tier answer these reject, whatever its confidence score: a call of a
function that was not offered, arguments that are not JSON or break the function's schema, or
content that is not the JSON the schema asks for is wrong for certain, and a client would fail
on it (routers/cascade/strategy.py, docs/cascade.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.core.structured.tool_calls import OPEN, ToolCall, invalid_arguments


def function_tools(extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = extra.get("tools")
    if not isinstance(tools, list):
        return []
    return [t for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"
            and isinstance(t.get("function"), dict)]


def named_function(choice: Any) -> str | None:
    """The function ``tool_choice`` names (``{"type": "function", "function": {"name"}}``), if any."""
    if not isinstance(choice, dict):
        return None
    name = (choice.get("function") or {}).get("name")
    return name if isinstance(name, str) else None


def structural_problem(extra: Mapping[str, Any], content: str, tool_calls: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the answer (``content``, ``tool_calls``) does not honour the request, or None."""
    tools = function_tools(extra)
    choice = extra.get("tool_choice")
    offered = bool(tools) and choice != "none"
    if tool_calls:
        if not offered:
            return "tool_call: a call although no tools are offered"
        return _calls_problem(tool_calls, tools, choice, extra.get("parallel_tool_calls") is not False)
    if offered and OPEN in content:
        return "tool_call: a malformed <tool_call> block"
    if offered and (choice == "required" or named_function(choice) is not None):
        return "tool_call: none made, but tool_choice requires one"
    return content_problem(extra.get("response_format"), content)


def _calls_problem(calls: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]], choice: Any,
                   parallel: bool) -> str | None:
    if not parallel and len(calls) > 1:
        return f"tool_call: {len(calls)} calls, but parallel_tool_calls is false"
    wanted = named_function(choice)
    for call in calls:
        function = call.get("function") or {}
        name = str(function.get("name") or "")
        if wanted is not None and name != wanted:
            return f"tool_call: called {name!r}, but tool_choice names {wanted!r}"
        arguments = function.get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        try:
            value = json.loads(text or "{}")  # "" is how some servers send a call without arguments
        except json.JSONDecodeError:
            return f"tool_call: the arguments of {name!r} are not valid JSON"
        if not isinstance(value, dict):
            return f"tool_call: the arguments of {name!r} are not a JSON object"
        reason = invalid_arguments(ToolCall(name, json.dumps(value), str(call.get("id") or "")), tools)
        if reason is not None:
            return f"tool_call: {reason}"
    return None


def content_problem(response_format: Any, content: str) -> str | None:
    """Why ``content`` is not what ``response_format`` asks for (``json_object``: a JSON object;
    ``json_schema``: JSON valid against the schema), or None."""
    import jsonschema

    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return "response_format: the content is not valid JSON"
    if kind == "json_object":
        return None if isinstance(value, dict) else "response_format: the content is not a JSON object"
    schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"response_format: {exc.message}"
    except jsonschema.SchemaError:
        return None  # the client's schema itself is broken: no answer can be judged against it
    return None
