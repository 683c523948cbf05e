"""What one record adds to the aggregates, per usage dimension — shared by both stores.

Both stores call :func:`contributions` on the same record dict, so ``/v1/gateway/usage``
means the same thing whichever store answers it:

* ``route`` / ``model`` / ``key`` / ``status``: one contribution per request, with the request's
  answer tokens, total cost (all calls), savings, latency and TTFT (``status``: ``ok`` or the
  error kind, so errors by kind come from the same aggregates).
* ``backend``: one contribution per backend the request called: that backend's calls' tokens
  and cost (used or not: they were billed), the time spent in it (sum of its calls' latencies)
  and its first call's TTFT. The request's savings go to the backend that produced the answer
  (the last used call), so summing any dimension's cost or savings gives the same total.
* A shadow job's record (endpoint ``shadow``) counts as a shadow job of its cascade's model, not as
  a request: its spend is in ``cost_usd`` and ``shadow_cost_usd`` (and, all its calls being unused,
  against ``savings_usd``), its calls in its backends' groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gateway.accounting.counters import Counters
from gateway.core.record import CallRecord, RequestRecord

DIMENSIONS = ("route", "model", "backend", "key", "status")
# The endpoint of a self-calibrating cascade's shadow job's record (gateway/serving/shadow.py).
SHADOW_ENDPOINT = "shadow"
ANONYMOUS_KEY = "anonymous"
# Never persisted, whatever a backend or strategy put into ``extra`` (defence in depth: keys
# are not supposed to reach a record at all).
_SECRET_MARKERS = ("api_key", "apikey", "authorization", "secret", "password", "token_value")
_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord) if f.name not in ("calls", "extra"))
_CALL_FIELDS = tuple(f.name for f in fields(CallRecord) if f.name != "extra")


@dataclass(slots=True)
class Contribution(Counters):
    """What one record adds to one group: the counters, plus one latency / TTFT sample."""

    latency_ms: float | None = None
    ttft_ms: float | None = None


def record_to_dict(record: RequestRecord) -> dict[str, Any]:
    """The stored form of a record: plain JSON-able values, secrets scrubbed.

    Same content as ``dataclasses.asdict`` but built field by field: asdict deep-copies
    recursively and costs ~10x more, which the writer pays for every record.
    """
    data = {name: getattr(record, name) for name in _RECORD_FIELDS}
    data["calls"] = [
        {**{name: getattr(call, name) for name in _CALL_FIELDS}, "extra": _scrub(call.extra)}
        for call in record.calls
    ]
    data["extra"] = _scrub(record.extra)
    return data


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _scrub(v) for k, v in value.items()
            if not any(marker in str(k).lower() for marker in _SECRET_MARKERS)
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def minute_of(record: Mapping[str, Any]) -> int:
    return int(float(record["created_at"]) // 60)


def group_value(record: Mapping[str, Any], dimension: str) -> str:
    if dimension == "route":
        return str(record.get("route") or "unrouted")
    if dimension == "model":
        return str(record.get("public_model") or "unknown")
    if dimension == "key":
        return str(record.get("key_id") or ANONYMOUS_KEY)
    if dimension == "status":
        return str(record.get("status") or "ok")
    raise ValueError(f"no single group value for dimension {dimension!r}")


def request_contribution(record: Mapping[str, Any] | RequestRecord) -> Contribution:
    """What a request adds to its route / model / key groups, from a stored record dict (the
    stores) or a live record (the Prometheus metrics): one definition of each counter."""
    if isinstance(record, RequestRecord):  # per request on the event loop: plain attributes
        counted = _request_level(record.prompt_tokens, record.completion_tokens, record.cost_usd,
                                 record.savings_usd, record.escalated, record.status, record.latency_ms, record.ttft_ms)
        extra: Any = record.extra
        endpoint: Any = record.endpoint
    else:
        get = record.get
        counted = _request_level(get("prompt_tokens"), get("completion_tokens"), get("cost_usd"), get("savings_usd"),
                                 get("escalated"), get("status"), get("latency_ms"), get("ttft_ms"))
        extra = get("extra")
        endpoint = get("endpoint")
    if endpoint == SHADOW_ENDPOINT:
        return _shadow_job(counted)
    speculative = extra.get("speculative") if extra else None
    if isinstance(speculative, dict):  # only speculative routes pay for this
        accepted, emitted = speculative.get("accepted"), speculative.get("emitted")
        if accepted is not None:  # predicted outputs: None when the upstream did not say
            counted.draft_tokens = int(speculative.get("drafted") or 0)
            counted.accepted_tokens = int(accepted)
        # Predicted outputs record no "emitted": the answer's tokens are what the passes produced.
        counted.speculative_tokens = int(emitted) if emitted is not None else counted.completion_tokens
        counted.target_passes = int(speculative.get("target_passes") or speculative.get("target_calls") or 0)
    return counted


def _shadow_job(counted: Contribution) -> Contribution:
    """A shadow job is no client request: it adds its spend (to cost and, unused, against savings)
    and itself to the shadow counters, and nothing to requests, answer tokens, latency or errors."""
    return Contribution(cost_usd=counted.cost_usd, savings_usd=counted.savings_usd, shadow_jobs=1,
                        shadow_cost_usd=counted.cost_usd)


def _request_level(prompt_tokens: Any, completion_tokens: Any, cost_usd: Any, savings_usd: Any, escalated: Any,
                   status: Any, latency_ms: Any, ttft_ms: Any) -> Contribution:
    return Contribution(
        requests=1,
        prompt_tokens=int(prompt_tokens or 0),
        completion_tokens=int(completion_tokens or 0),
        cost_usd=float(cost_usd or 0.0),
        savings_usd=float(savings_usd or 0.0),
        escalated=1 if escalated else 0,
        errors=0 if (status or "ok") == "ok" else 1,
        latency_ms=_optional_float(latency_ms),
        ttft_ms=_optional_float(ttft_ms),
    )


def contributions(record: Mapping[str, Any]) -> dict[str, dict[str, Contribution]]:
    """``{dimension: {group: Contribution}}`` for one stored record dict."""
    request_level = request_contribution(record)
    result: dict[str, dict[str, Contribution]] = {
        dimension: {group_value(record, dimension): request_level} for dimension in ("route", "model", "key", "status")
    }
    result["backend"] = _backend_contributions(
        record, request_level.escalated, request_level.errors, request_level.savings_usd)
    return result


def _backend_contributions(
    record: Mapping[str, Any], escalated: int, errors: int, savings: float
) -> dict[str, Contribution]:
    calls: list[Mapping[str, Any]] = list(record.get("calls") or [])
    by_backend: dict[str, Contribution] = {}
    for call in calls:
        backend = str(call.get("backend") or "unknown")
        item = by_backend.get(backend)
        if item is None:
            item = by_backend[backend] = Contribution(requests=1, escalated=escalated, latency_ms=0.0)
        item.prompt_tokens += int(call.get("prompt_tokens") or 0)
        item.completion_tokens += int(call.get("completion_tokens") or 0)
        item.cost_usd += float(call.get("cost_usd") or 0.0)
        item.latency_ms = (item.latency_ms or 0.0) + float(call.get("latency_ms") or 0.0)
        if item.ttft_ms is None and call.get("ttft_ms") is not None:
            item.ttft_ms = float(call["ttft_ms"])
        if call.get("status", "ok") != "ok":
            item.errors = 1
    if calls:
        used = [call for call in calls if call.get("used", True)]
        answering = str((used or calls)[-1].get("backend") or "unknown")
        by_backend[answering].savings_usd = savings
    else:
        # A request that failed before any upstream call still counts somewhere.
        by_backend["none"] = Contribution(requests=1, escalated=escalated, errors=errors, savings_usd=savings)
    return by_backend


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
