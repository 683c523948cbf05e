"""What the dashboard shows, read from the accounting store that answers ``/v1/gateway/usage``.

One :func:`overview` per poll: the window's usage per dimension (the very bodies
``/v1/gateway/usage`` returns for the same minutes), a time series of per-bucket totals, the
cascades' escalation rates and the speculative routes' acceptance, and the top keys by spend
with their budgets. Nothing here runs on the request path: the page polls, the store answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from gateway.accounting.facts import DIMENSIONS
from gateway.accounting.store import GroupTotals, RecordStore, usage_body


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    minutes: int
    bucket_minutes: int  # series resolution: 15-60 points whatever the window
    refresh_s: float  # how often the page polls


WINDOWS = {w.name: w for w in (
    Window("15m", 15, 1, 5.0), Window("1h", 60, 2, 5.0), Window("24h", 1440, 30, 30.0), Window("7d", 10080, 180, 60.0),
)}
TOP_KEYS = 10


def minutes_of(window: Window, now: float) -> tuple[int, int]:
    """Whole minutes ``[first, last]``, as ``/v1/gateway/usage?since=<window>`` takes them."""
    last = int(now // 60)
    return int((now - window.minutes * 60) // 60), last


async def overview(store: RecordStore, window: Window, *, strategy_types: dict[str, str],
                   keys: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """The dashboard's body for one window. ``strategy_types``: public model -> strategy type;
    ``keys``: the key store's public views (name and budget of each key id)."""
    now = time.time() if now is None else now
    first, last = minutes_of(window, now)
    totals = dict(zip(DIMENSIONS, await asyncio.gather(
        *(store.totals(first, last, dimension) for dimension in DIMENSIONS)), strict=True))
    usage = {dimension: usage_body(groups)["groups"] for dimension, groups in totals.items()}
    by_model = {group["key"]: group for group in usage["model"]}
    return {
        "window": window.name, "refresh_s": window.refresh_s, "first_minute": first, "last_minute": last,
        "generated_at": now, "usage": usage,
        "totals": _grand_total(totals["route"]),
        "series": await _series(store, first, last, window.bucket_minutes),
        "cascades": [_cascade(name, by_model.get(name)) for name, kind in strategy_types.items() if kind == "cascade"],
        "speculative": [_speculative(name, by_model.get(name)) for name, kind in strategy_types.items()
                        if kind == "speculative"],
        "keys": _top_keys(usage["key"], keys),
    }


def _grand_total(groups: dict[str, GroupTotals]) -> dict[str, Any]:
    cost = sum(g.cost_usd for g in groups.values())
    savings = sum(g.savings_usd for g in groups.values())
    requests = sum(g.requests for g in groups.values())
    return {
        "requests": requests, "errors": sum(g.errors for g in groups.values()),
        "escalated": sum(g.escalated for g in groups.values()),
        "cost_usd": round(cost, 10), "savings_usd": round(savings, 10),
        # Savings are reference - cost per request that has a reference; without one they are 0,
        # so this is what the same traffic would have cost on the reference LLM.
        "reference_cost_usd": round(cost + savings, 10),
    }


async def _series(store: RecordStore, first: int, last: int, step: int) -> list[dict[str, Any]]:
    starts = list(range(first, last + 1, step))
    buckets = await asyncio.gather(*(store.totals(start, min(last, start + step - 1), "route") for start in starts))
    series = []
    for start, groups in zip(starts, buckets, strict=True):
        point = _grand_total(groups)
        point["t"] = start * 60
        point["routes"] = {route: totals.requests for route, totals in groups.items()}
        series.append(point)
    return series


def _cascade(model: str, group: dict[str, Any] | None) -> dict[str, Any]:
    group = group or {}
    return {"model": model, "requests": group.get("requests", 0), "escalation_rate": group.get("escalation_rate", 0.0)}


def _speculative(model: str, group: dict[str, Any] | None) -> dict[str, Any]:
    group = group or {}
    drafted, accepted = group.get("draft_tokens", 0), group.get("accepted_tokens", 0)
    emitted, passes = group.get("speculative_tokens", 0), group.get("target_passes", 0)
    return {
        "model": model, "requests": group.get("requests", 0), "draft_tokens": drafted, "accepted_tokens": accepted,
        "acceptance_rate": round(accepted / drafted, 6) if drafted else None,
        "tokens_per_target_pass": round(emitted / passes, 6) if passes else None,
    }


def _top_keys(groups: list[dict[str, Any]], keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = {key["id"]: key for key in keys}
    ranked = sorted(groups, key=lambda group: (-group["cost_usd"], group["key"]))[:TOP_KEYS]
    out = []
    for group in ranked:
        key = known.get(group["key"], {})
        out.append({
            "key_id": group["key"], "name": key.get("name"), "requests": group["requests"],
            "cost_usd": group["cost_usd"], "budget_usd": key.get("budget_usd"), "spent_usd": key.get("spent_usd"),
        })
    return out


def request_row(record: dict[str, Any]) -> dict[str, Any]:
    """One line of the latest-requests table (the full record is ``/v1/gateway/requests/{id}``)."""
    names = ("request_id", "created_at", "public_model", "endpoint", "stream", "key_id", "route", "status",
             "http_status", "prompt_tokens", "completion_tokens", "cost_usd", "savings_usd", "latency_ms", "ttft_ms",
             "escalated", "confidence")
    row = {name: record.get(name) for name in names}
    row["calls"] = len(record.get("calls") or [])
    return row
