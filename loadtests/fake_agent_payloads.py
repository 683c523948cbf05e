"""The fake upstream's answers to agent requests: tool calls, structured outputs, refusals,
and embeddings — deterministic, so relay tests can compare every byte that comes back.

* ``tools`` offered (and ``tool_choice`` not ``none``): a call of the chosen tool (or the
  first; one per tool, up to two, when ``parallel_tool_calls`` is not false), whose arguments
  are a minimal instance of its ``parameters`` schema, streamed in two fragments;
  ``finish_reason: tool_calls``.
* ``response_format`` ``json_schema``: the text is a minimal instance of the schema;
  ``json_object``: ``{"ok": true}``.
* a last user message containing ``REFUSE``: a refusal instead of content.

Every answer carries ``system_fingerprint``, ``service_tier`` and usage details, which a
faithful relay passes on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from loadtests.fake_payloads import DONE_EVENT, prompt_token_count

FINGERPRINT = "fp_fake_agent"
SERVICE_TIER = "default"
USAGE_DETAILS = {"prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
REFUSAL = "I can't help with that."
MAX_DIMENSIONS = 3072  # text-embedding-3-large's; more is a 400, as upstream


@dataclass
class AgentPlan:
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments JSON)
    text: str = ""
    refusal: str | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else "stop"

    @property
    def completion_tokens(self) -> int:
        return max(1, len(self.text.split()) + 2 * len(self.calls) + (1 if self.refusal else 0))


def schema_instance(schema: Any, depth: int = 0) -> Any:
    """A small value that validates against ``schema`` (the subset tools and tests use)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: schema_instance(props[name], depth + 1) for name in props}
    if kind == "array":
        return [schema_instance(schema.get("items") or {}, depth + 1)] if schema.get("minItems") else []
    return {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), "fake")


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


def agent_plan(body: dict[str, Any]) -> AgentPlan | None:
    """The scripted answer to a chat request, or None for a plain one (the word cycle)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice")
    if "REFUSE" in _last_user_text(body):
        return AgentPlan(refusal=REFUSAL)
    if tools and choice != "none":
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            tools = [t for t in tools if t["function"].get("name") == wanted] or tools[:1]
        chosen = tools[:2] if body.get("parallel_tool_calls") is not False else tools[:1]
        calls = [(f"call_fake{i}", t["function"]["name"],
                  orjson.dumps(schema_instance(t["function"].get("parameters") or {}) or {}).decode())
                 for i, t in enumerate(chosen)]
        return AgentPlan(calls=calls)
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return AgentPlan(text=orjson.dumps(schema_instance(schema)).decode())
    if fmt.get("type") == "json_object":
        return AgentPlan(text='{"ok": true}')
    return None


def _usage(plan: AgentPlan, body: dict[str, Any]) -> dict[str, Any]:
    prompt = prompt_token_count("chat", body)
    return {"prompt_tokens": prompt, "completion_tokens": plan.completion_tokens,
            "total_tokens": prompt + plan.completion_tokens, **USAGE_DETAILS}


def _chunk(response_id: str, created: int, model: str, choices: list[dict[str, Any]]) -> bytes:
    payload = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": FINGERPRINT, "service_tier": SERVICE_TIER, "choices": choices}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def agent_stream(plan: AgentPlan, body: dict[str, Any], response_id: str, created: int) -> Iterator[bytes]:
    model = str(body.get("model") or "fake-model")

    def delta(d: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        return _chunk(response_id, created, model, [{"index": 0, "delta": d, "logprobs": logprobs,
                                                     "finish_reason": finish}])

    yield delta({"role": "assistant", "content": None if plan.calls or plan.refusal else "", "refusal": None})
    if plan.refusal:
        half = len(plan.refusal) // 2
        refusal_logprobs = {"content": None, "refusal": [{"token": "I", "logprob": -0.1, "bytes": [73],
                                                          "top_logprobs": []}]} if body.get("logprobs") else None
        yield delta({"refusal": plan.refusal[:half]}, logprobs=refusal_logprobs)
        yield delta({"refusal": plan.refusal[half:]})
    for index, (call_id, name, arguments) in enumerate(plan.calls):
        yield delta({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})
        cut = len(arguments) // 2
        for piece in (arguments[:cut], arguments[cut:]):
            yield delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    if plan.text:
        yield delta({"content": plan.text})
    yield delta({}, plan.finish_reason)
    if (body.get("stream_options") or {}).get("include_usage"):
        payload = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": FINGERPRINT, "service_tier": SERVICE_TIER, "choices": [],
                   "usage": _usage(plan, body)}
        yield b"data: " + orjson.dumps(payload) + b"\n\n"
    yield DONE_EVENT


def agent_full(plan: AgentPlan, body: dict[str, Any], response_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text if not (plan.calls or plan.refusal) else None,
                               "refusal": plan.refusal}
    if plan.calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in plan.calls]
    return {"id": response_id, "object": "chat.completion", "created": created,
            "model": str(body.get("model") or "fake-model"), "system_fingerprint": FINGERPRINT,
            "service_tier": SERVICE_TIER, "usage": _usage(plan, body),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}]}


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector from the text's hash: equal texts embed equally, different ones do not."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % len(seed)] + 7 * i) % 251) / 250.0 - 0.5 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def embeddings_response(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else list(inputs or [])
    if items and isinstance(items[0], int):
        items = [items]
    dimensions = int(body.get("dimensions") or 8)
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"dimensions must be within [1, {MAX_DIMENSIONS}]")
    data = [{"object": "embedding", "index": i, "embedding": fake_embedding(str(item), dimensions)}
            for i, item in enumerate(items)]
    tokens = sum(len(item.split()) if isinstance(item, str) else len(item) for item in items)
    return {"object": "list", "model": str(body.get("model") or "fake-model"), "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
