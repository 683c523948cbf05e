"""The accounting record: one per client request, one :class:`CallRecord` per upstream call.

Strategies fill these through :class:`gateway.core.strategy.RequestContext`; the app finalises the
record when the response is complete (or failed) and hands it to the accounting sink.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class CallRecord:
    backend: str
    model: str
    started_at: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: str = "ok"  # "ok" or an error kind (gateway.core.errors.error_kind)
    used: bool = True  # False: output discarded (e.g. a cascade's escalated attempt)
    purpose: str = "answer"  # answer | draft | verify | probe | fallback
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    public_model: str
    endpoint: str
    stream: bool
    created_at: float = field(default_factory=time.time)
    key_id: str | None = None
    route: str = ""
    status: str = "ok"
    http_status: int = 200
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    reference_cost_usd: float | None = None
    savings_usd: float | None = None
    confidence: float | None = None
    escalated: bool | None = None
    fallback: str | None = None
    rule: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Added by accounting (finalize_record): the part of cost_usd spent on unused calls.
    wasted_cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
