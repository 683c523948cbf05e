"""OpenAI's Responses API (``POST /v1/responses``) as a chat completion, and back.

Every model answers it: the request is translated to a chat request (``instructions`` as the
system message, input items as messages, function tools and ``text.format`` to chat's
``tools`` / ``response_format``) and the chat answer is shaped as a Response object. What
chat cannot express (built-in tools such as web search, background runs, stored prompts,
conversations) is a 400 that says so, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.errors import InvalidRequestError, UnsupportedParameterError
from gateway.core.protocol import INT64_MAX, INT64_MIN

# Fields relayed to the chat request as they are (an HTTP upstream may use them).
_RELAYED = ("user", "service_tier", "safety_identifier", "prompt_cache_key", "parallel_tool_calls")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    stream: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    user: str | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None

    def check_supported(self) -> None:
        extra = self.model_extra or {}
        for name in ("conversation", "prompt", "context_management"):
            if extra.get(name) is not None:
                raise UnsupportedParameterError(f"{name!r} is not supported by this gateway's Responses API "
                                                "(it is served as a chat completion)", param=name)
        if self.background:
            raise UnsupportedParameterError("background responses are not supported", param="background")
        if self.model is None:
            raise InvalidRequestError("model is required", param="model")

    def wants_logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or [])


def _text_of(content: Any) -> str | list[dict[str, Any]]:
    """Input content as chat content: a string, or parts renamed to chat's part types."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("message content must be a string or a list of parts", param="input")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "input_image" and isinstance(part, dict):
            url = part.get("image_url")
            if not isinstance(url, str):
                raise UnsupportedParameterError("input_image parts need an 'image_url' (file_id is not supported)",
                                                param="input")
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}})
        elif kind == "refusal" and isinstance(part, dict):
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        else:
            raise UnsupportedParameterError(f"input content parts of type {kind!r} are not supported", param="input")
    return parts


def input_messages(items: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Chat messages of a Responses ``input``: text, messages and function-call items."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type") or "message"
        if kind == "message" and item.get("role") in ("user", "system", "developer", "assistant"):
            messages.append({"role": item["role"], "content": _text_of(item.get("content", ""))})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id") or ""), "type": "function",
                    "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)  # parallel calls are one assistant turn in chat
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _joined(output)
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""), "content": text})
        elif kind == "reasoning":
            continue  # a reasoning model's own notes: chat has no place for them
        else:
            raise UnsupportedParameterError(f"input items of type {kind!r} are not supported", param="input")
    return messages


def _joined(output: Any) -> str:
    if isinstance(output, list):
        return "".join(str(p.get("text") or "") for p in output if isinstance(p, dict))
    return "" if output is None else str(output)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    converted = []
    for tool in tools:
        if tool.get("type") != "function":
            raise UnsupportedParameterError(f"tools of type {tool.get('type')!r} are not supported (function "
                                            "tools are)", param="tools")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise UnsupportedParameterError(f"tool_choice {choice.get('type')!r} is not supported", param="tool_choice")


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise UnsupportedParameterError(f"text.format {fmt['type']!r} is not supported", param="text")


def chat_body(request: ResponsesRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completion request that answers ``request`` after ``history`` (earlier turns)."""
    messages = list(history) + input_messages(request.input)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    if not messages:
        raise InvalidRequestError("input is required", param="input")
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    simple = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed,
              "max_completion_tokens": request.max_output_tokens, "tools": chat_tools(request.tools),
              "tool_choice": chat_tool_choice(request.tool_choice),
              "response_format": chat_response_format(request.text)}
    body.update({k: v for k, v in simple.items() if v is not None})
    for name in _RELAYED:
        value = getattr(request, name, None)
        if value is not None:
            body[name] = value
    effort = (request.reasoning or {}).get("effort")
    if effort is not None:
        body["reasoning_effort"] = effort
    if request.wants_logprobs():
        body["logprobs"] = True
        if request.top_logprobs:
            body["top_logprobs"] = request.top_logprobs
    return body
