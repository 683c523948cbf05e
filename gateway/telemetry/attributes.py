"""Span names and attributes of a request and its upstream calls, from the accounting record.

OpenTelemetry's GenAI semantic conventions where they have a name (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.provider.name``,
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``error.type``), the gateway's own under
``slm_gateway.*`` (route, escalated, confidence, cost, savings, the call's purpose and whether
its output was used). Pure functions of the record: no SDK import here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.core.record import CallRecord, RequestRecord

Attributes = dict[str, str | bool | int | float]
_OPERATIONS = {"chat": "chat", "responses": "chat", "completions": "text_completion", "embeddings": "embeddings"}


def operation(endpoint: str) -> str:
    for prefix, name in _OPERATIONS.items():
        if endpoint.startswith(prefix):
            return name
    return endpoint or "request"


def request_span_name(record: RequestRecord) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, as the conventions name a span."""
    return f"{operation(record.endpoint)} {record.public_model}"


def request_attributes(record: RequestRecord) -> Attributes:
    out: Attributes = {
        "gen_ai.operation.name": operation(record.endpoint),
        "gen_ai.request.model": record.public_model,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "slm_gateway.request_id": record.request_id,
        "slm_gateway.route": record.route or "unrouted",
        "slm_gateway.status": record.status,
        "slm_gateway.stream": record.stream,
        "slm_gateway.cost_usd": record.cost_usd,
        "slm_gateway.wasted_cost_usd": record.wasted_cost_usd,
        "slm_gateway.latency_ms": round(record.latency_ms, 3),
        "slm_gateway.upstream_calls": len(record.calls),
    }
    answering = [call for call in record.calls if call.used]
    if answering:
        out["gen_ai.response.model"] = answering[-1].model
    _optional(out, {
        "slm_gateway.escalated": record.escalated, "slm_gateway.confidence": record.confidence,
        "slm_gateway.savings_usd": record.savings_usd, "slm_gateway.reference_cost_usd": record.reference_cost_usd,
        "slm_gateway.ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 3),
        "slm_gateway.fallback": record.fallback, "slm_gateway.rule": record.rule, "slm_gateway.key_id": record.key_id,
    })
    if record.status != "ok":
        out["error.type"] = record.status
    return out


def call_span_name(record: RequestRecord, call: CallRecord) -> str:
    return f"{operation(record.endpoint)} {call.model}"


def call_attributes(record: RequestRecord, call: CallRecord, providers: Mapping[str, str]) -> Attributes:
    """``providers``: backend name -> backend kind (``openai``, ``local``, ...) from the policy."""
    out: Attributes = {
        "gen_ai.operation.name": operation(record.endpoint),
        "gen_ai.provider.name": providers.get(call.backend, "unknown"),
        "gen_ai.request.model": call.model,
        "gen_ai.response.model": call.model,
        "gen_ai.usage.input_tokens": call.prompt_tokens,
        "gen_ai.usage.output_tokens": call.completion_tokens,
        "slm_gateway.backend": call.backend,
        "slm_gateway.call.purpose": call.purpose,
        "slm_gateway.call.used": call.used,
        "slm_gateway.cost_usd": call.cost_usd,
        "slm_gateway.status": call.status,
    }
    _optional(out, {"slm_gateway.ttft_ms": None if call.ttft_ms is None else round(call.ttft_ms, 3)})
    if call.status not in ("ok", "cancelled"):
        out["error.type"] = call.status
    return out


def _optional(out: Attributes, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if value is not None:
            out[name] = value
