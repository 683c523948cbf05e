"""The one interface both record stores (Redis, embedded SQLite) implement, and the shared
shape of what they return.

Stores take records in their stored dict form (:func:`gateway.accounting.facts.record_to_dict`)
so that spooled JSON lines can be replayed without rebuilding dataclasses. Every write is
idempotent by ``request_id``: writing the same record twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.accounting.buckets import percentile
from gateway.accounting.counters import COUNTER_FIELDS, FIELD_BY_NAME, Counters

Histogram = dict[int, int]


class StoreUnavailableError(Exception):
    """The store cannot take writes right now (Redis down, disk full): spool and retry."""


@dataclass(slots=True)
class GroupTotals(Counters):
    """A group's summed aggregates over a time window."""

    latency_hist: Histogram = field(default_factory=dict)
    ttft_hist: Histogram = field(default_factory=dict)

    def add_counter(self, name: str, value: float | str | None) -> None:
        """Add a stored counter value; names that are not counters are ignored."""
        counter = FIELD_BY_NAME.get(name)
        if counter is not None:
            setattr(self, name, getattr(self, name) + counter.coerce(value))

    def to_json(self, key: str) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key}
        for counter in COUNTER_FIELDS:
            if counter.usage:
                value = getattr(self, counter.name)
                body[counter.name] = round(value, 10) if counter.kind == "float" else value
        body["latency_ms"] = {f"p{q}": percentile(self.latency_hist, q / 100) for q in (50, 95, 99)}
        body["ttft_ms"] = {f"p{q}": percentile(self.ttft_hist, q / 100) for q in (50, 95)}
        body["escalation_rate"] = round(self.escalated / self.requests, 6) if self.requests else 0.0
        return body


def usage_body(groups: Mapping[str, GroupTotals]) -> dict[str, Any]:
    """The ``/v1/gateway/usage`` answer: groups by descending request count, then key."""
    ordered = sorted(groups.items(), key=lambda item: (-item[1].requests, item[0]))
    return {"groups": [totals.to_json(key) for key, totals in ordered]}


class RecordStore(Protocol):
    async def open(self) -> None: ...

    async def write_batch(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Persist records idempotently; return how many were new. Raise StoreUnavailableError."""
        ...

    async def ping(self) -> bool: ...

    async def totals(self, first_minute: int, last_minute: int, dimension: str) -> dict[str, GroupTotals]:
        """Per-group aggregates over whole minutes ``[first_minute, last_minute]`` (epoch // 60)."""
        ...

    async def get_record(self, request_id: str) -> dict[str, Any] | None: ...

    async def recent_records(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` records, newest first (the dashboard's request table)."""
        ...

    async def close(self) -> None: ...
