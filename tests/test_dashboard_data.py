"""The dashboard's JSON on both real stores (SQLite and Redis): the overview equals the usage
aggregates minute for minute, the series sums to the totals, speculative acceptance and tokens per
target pass come from summed counters, errors by kind from the ``status`` dimension, and the
latest records come back newest first."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.accounting.facts import record_to_dict, request_contribution
from gateway.accounting.store import RecordStore, usage_body
from gateway.dashboard.data import WINDOWS, minutes_of, overview, request_row
from tests.test_accounting_stores import make_record, store  # noqa: F401 - the two-store fixture

NOW = time.time()


def speculative(drafted: int, accepted: int, emitted: int, passes: int) -> dict[str, Any]:
    return {"drafted": drafted, "accepted": accepted, "emitted": emitted, "target_passes": passes}


async def write_mix(store: RecordStore) -> list[dict[str, Any]]:  # noqa: F811
    records = []
    for i, (route, status, spec, minutes_ago) in enumerate([
        ("slm", "ok", None, 1), ("slm>llm", "ok", None, 2), ("llm", "upstream_timeout", None, 3),
        ("speculative", "ok", speculative(40, 30, 36, 10), 4), ("speculative", "ok", speculative(20, 5, 9, 5), 30),
        ("slm", "ok", None, 2 * 1440),  # outside 24 h, inside 7 d
    ]):
        record = make_record(route, escalated=route == "slm>llm", created_at=NOW - minutes_ago * 60 + i,
                             cost_usd=0.001 * (i + 1))
        record.public_model = route.replace(">", "-")
        record.status = status
        if spec is not None:
            record.extra["speculative"] = spec
        records.append(record_to_dict(record))
    assert await store.write_batch(records) == len(records)
    return records


async def test_overview_equals_the_usage_aggregates(store: RecordStore) -> None:  # noqa: F811
    await write_mix(store)
    types = {"slm": "static", "slm-llm": "cascade", "llm": "static", "speculative": "speculative"}
    for name, window in WINDOWS.items():
        body = await overview(store, window, strategy_types=types, keys=[], now=NOW)
        first, last = minutes_of(window, NOW)
        for dimension in ("route", "model", "key", "status"):
            assert body["usage"][dimension] == usage_body(await store.totals(first, last, dimension))["groups"]
        expected = {"15m": 4, "1h": 5, "24h": 5, "7d": 6}[name]
        assert body["totals"]["requests"] == expected
        assert sum(sum(point["routes"].values()) for point in body["series"]) == expected
        assert sum(point["cost_usd"] for point in body["series"]) == pytest.approx(body["totals"]["cost_usd"])
        assert body["totals"]["reference_cost_usd"] == pytest.approx(
            body["totals"]["cost_usd"] + body["totals"]["savings_usd"])
    hour = await overview(store, WINDOWS["1h"], strategy_types=types, keys=[], now=NOW)
    (spec,) = hour["speculative"]
    assert spec["acceptance_rate"] == pytest.approx(35 / 60) and spec["tokens_per_target_pass"] == pytest.approx(3.0)
    (cascade,) = hour["cascades"]
    assert cascade == {"model": "slm-llm", "requests": 1, "escalation_rate": 1.0}
    assert {g["key"]: g["requests"] for g in hour["usage"]["status"]} == {"ok": 4, "upstream_timeout": 1}
    quarter = await overview(store, WINDOWS["15m"], strategy_types=types, keys=[], now=NOW)
    assert quarter["speculative"][0]["acceptance_rate"] == pytest.approx(30 / 40)  # the older one is outside


def test_predicted_outputs_count_what_they_report() -> None:
    record = make_record("speculative", completion_tokens=30)
    record.extra["speculative"] = {"mode": "predicted", "rounds": 1, "drafted": 40, "accepted": None,
                                   "rejected": None, "target_calls": 1}
    counted = request_contribution(record)
    # Acceptance unknown: neither drafted nor accepted is counted; one call produced the answer.
    assert (counted.draft_tokens, counted.accepted_tokens, counted.speculative_tokens, counted.target_passes) == (
        0, 0, 30, 1)
    record.extra["speculative"]["accepted"] = 25
    counted = request_contribution(record_to_dict(record))
    assert (counted.draft_tokens, counted.accepted_tokens) == (40, 25)


async def test_top_keys_carry_their_budget(store: RecordStore) -> None:  # noqa: F811
    for key_id, cost in (("key_a", 0.004), ("key_b", 0.001), ("key_a", 0.002)):
        await store.write_batch([record_to_dict(make_record(key_id=key_id, cost_usd=cost, created_at=NOW))])
    keys = [{"id": "key_a", "name": "team-a", "budget_usd": 0.01, "spent_usd": 0.006}]
    body = await overview(store, WINDOWS["15m"], strategy_types={}, keys=keys, now=NOW)
    assert [k["key_id"] for k in body["keys"]] == ["key_a", "key_b"]
    assert body["keys"][0] == {"key_id": "key_a", "name": "team-a", "requests": 2, "cost_usd": pytest.approx(0.006),
                               "budget_usd": 0.01, "spent_usd": 0.006}
    assert body["keys"][1]["budget_usd"] is None


async def test_latest_records_newest_first(store: RecordStore) -> None:  # noqa: F811
    records = await write_mix(store)
    latest = await store.recent_records(3)
    by_time = sorted(records, key=lambda r: r["created_at"], reverse=True)
    if type(store).__name__ == "RedisRecordStore":  # the stream keeps write order
        by_time = list(reversed(records))
    assert [r["request_id"] for r in latest] == [r["request_id"] for r in by_time[:3]]
    row = request_row(latest[0])
    assert row["calls"] == len(latest[0]["calls"]) and row["route"] == latest[0]["route"]
