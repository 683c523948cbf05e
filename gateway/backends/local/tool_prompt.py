"""Tools in a local model's prompt: through its own chat template when that supports them, else
in the format :mod:`gateway.core.structured.tool_calls` reads, written by us.

Qwen2.5's template renders ``tools``, an assistant's ``tool_calls`` and ``role: tool`` results;
SmolLM2-135M's renders none of them (it would show a tool result as an unknown role and drop
the calls). Which applies is found by rendering probe conversations once per template, as
llama.cpp's template-capabilities check does, not by the model's name. A template without
tool support gets Qwen's (Hermes) tool prompt as a system message, past calls as
``<tool_call>`` blocks in the assistant's text and tool results as ``<tool_response>`` blocks in
a user turn: one format in the prompt, the parser and the ``required`` grammar.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.backend import ChatMessage
from gateway.core.structured.tool_calls import CLOSE, OPEN

# (messages as template dicts, tools or None) -> the rendered prompt, generation prompt added.
RenderFn = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]

_PROBE = "slm_gateway_probe_fn"
_PROBE_TOOL = {"type": "function", "function": {"name": _PROBE, "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}
_PROBE_ANSWER = "slm_gateway_probe_result"

# Qwen2.5's own tool prompt (its template's text): the Hermes format the model families we run
# were trained on, and the one the tool_choice grammar produces.
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


@dataclass(frozen=True, slots=True)
class TemplateToolSupport:
    tools: bool  # the template shows the ``tools`` it is given
    tool_calls: bool  # it shows an assistant turn's ``tool_calls`` (and, with them, tool results)


def probe_tool_support(render: RenderFn) -> TemplateToolSupport:
    """What a template does with tools, from what it renders for two probe conversations."""
    user = {"role": "user", "content": "hi"}
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_probe", "type": "function", "function": {"name": _PROBE, "arguments": {}}}]}
    result = {"role": "tool", "tool_call_id": "call_probe", "content": _PROBE_ANSWER}
    return TemplateToolSupport(tools=_renders(render, [user], [_PROBE_TOOL], _PROBE),
                               tool_calls=_renders(render, [user, call, result], None, _PROBE))


def _renders(render: RenderFn, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
             marker: str) -> bool:
    try:
        return marker in render(messages, tools)
    except Exception:  # refused (raise_exception) or broke on it: no support, and never a failed model load
        return False


def template_conversation(
    messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]], support: TemplateToolSupport,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` argument to render for ``messages`` offering ``tools``."""
    dicts = [_template_message(m) for m in messages]
    if not support.tool_calls:
        dicts = _calls_as_text(dicts)
    offered = [dict(t) for t in tools]
    if not offered:
        return dicts, None
    if support.tools:
        return dicts, offered
    return _with_tool_prompt(dicts, offered), None


def _template_message(message: ChatMessage) -> dict[str, Any]:
    data = message.template_dict()
    if message.tool_calls:
        # OpenAI carries arguments as JSON text; chat templates (Qwen's `arguments | tojson`) expect
        # the object, as transformers and vLLM pass it.
        data["tool_calls"] = [_call_with_object_arguments(call) for call in message.tool_calls]
    return data


def _call_with_object_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # else shown as the client wrote it
            function["arguments"] = json.loads(arguments)
    return {**call, "function": function}


def _call_block(call: Mapping[str, Any]) -> str:
    function = call.get("function") or {}
    body = json.dumps({"name": function.get("name", ""), "arguments": function.get("arguments", {})},
                      ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def _calls_as_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Past calls and their results in the text format the tool prompt teaches."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call) for call in message.pop("tool_calls")]
            message["content"] = "\n".join(([message["content"]] if message.get("content") else []) + blocks)
            out.append(message)
        elif message["role"] == "tool":
            block = f"<tool_response>\n{message.get('content', '')}\n</tool_response>"
            previous = out[-1] if out else None
            if previous is not None and previous.get("_tool_results"):
                previous["content"] += "\n" + block  # consecutive results share one user turn
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append(message)
    for message in out:
        message.pop("_tool_results", None)
    return out


def _with_tool_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    listing = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    prompt = TOOLS_HEADER + listing + TOOLS_FOOTER
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first.get('content', '')}\n\n{prompt}".lstrip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]
