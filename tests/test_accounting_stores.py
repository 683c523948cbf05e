"""Both record stores, for real: the embedded SQLite file and the Redis server on 6379."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.buckets import bucket_of, percentile
from gateway.accounting.facts import record_to_dict
from gateway.accounting.redis_store import RedisRecordStore
from gateway.accounting.sqlite_store import SQLiteRecordStore
from gateway.accounting.store import RecordStore
from gateway.core.record import CallRecord, RequestRecord

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_listening(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def make_record(
    route: str = "slm",
    *,
    latency_ms: float = 100.0,
    ttft_ms: float | None = 20.0,
    key_id: str | None = None,
    created_at: float | None = None,
    escalated: bool | None = None,
    calls: list[CallRecord] | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cost_usd: float = 0.001,
    savings_usd: float | None = 0.002,
) -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{uuid.uuid4().hex}",
        public_model="auto",
        endpoint="/v1/chat/completions",
        stream=False,
        created_at=time.time() if created_at is None else created_at,
        key_id=key_id,
        route=route,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
        savings_usd=savings_usd,
        escalated=escalated,
        calls=calls if calls is not None else [
            CallRecord(backend=route.split(">")[-1], model="m", started_at=time.time(),
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                       cost_usd=cost_usd, latency_ms=latency_ms, ttft_ms=ttft_ms)
        ],
    )


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordStore]:
    if request.param == "sqlite":
        sqlite_store = SQLiteRecordStore(tmp_path / "accounting.sqlite3")
        await sqlite_store.open()
        yield sqlite_store
        await sqlite_store.close()
        return
    if not redis_listening():
        pytest.skip("no Redis server on 127.0.0.1:6379 (.ci/run starts one)")
    redis_store = RedisRecordStore(REDIS_URL, prefix=f"test-acct-{uuid.uuid4().hex[:10]}:")
    yield redis_store
    await redis_store.delete_all()
    await redis_store.close()


def now_minutes() -> tuple[int, int]:
    minute = int(time.time() // 60)
    return minute - 5, minute + 1


async def test_usage_sums_records_per_dimension(store: RecordStore) -> None:
    cascade_calls = [
        CallRecord(backend="slm", model="s", started_at=0, prompt_tokens=30, completion_tokens=8,
                   cost_usd=0.0001, latency_ms=40.0, ttft_ms=5.0, used=False),
        CallRecord(backend="llm", model="l", started_at=0, prompt_tokens=30, completion_tokens=12,
                   cost_usd=0.0002, latency_ms=300.0, ttft_ms=80.0),
    ]
    records = [
        make_record("slm", latency_ms=50, cost_usd=0.0, savings_usd=0.001, key_id="k1"),
        make_record("slm", latency_ms=70, cost_usd=0.0, savings_usd=0.001, key_id="k2"),
        make_record("slm>llm", latency_ms=350, ttft_ms=90, escalated=True, calls=cascade_calls,
                    prompt_tokens=30, completion_tokens=12, cost_usd=0.0003, savings_usd=-0.0001),
    ]
    assert await store.write_batch([record_to_dict(r) for r in records]) == 3
    first, last = now_minutes()

    by_route = await store.totals(first, last, "route")
    assert set(by_route) == {"slm", "slm>llm"}
    assert by_route["slm"].requests == 2
    assert by_route["slm"].prompt_tokens == 20 and by_route["slm"].completion_tokens == 10
    assert by_route["slm"].savings_usd == pytest.approx(0.002)
    assert by_route["slm>llm"].escalated == 1
    assert by_route["slm>llm"].cost_usd == pytest.approx(0.0003)
    body = by_route["slm>llm"].to_json("slm>llm")
    assert body["escalation_rate"] == 1.0
    assert body["latency_ms"]["p50"] == pytest.approx(350, rel=0.05)

    by_backend = await store.totals(first, last, "backend")
    # The cascade's discarded slm attempt is billed to slm; the answer's savings go to llm.
    assert by_backend["slm"].requests == 3
    assert by_backend["slm"].prompt_tokens == 20 + 30
    assert by_backend["slm"].cost_usd == pytest.approx(0.0001)
    assert by_backend["llm"].requests == 1 and by_backend["llm"].savings_usd == pytest.approx(-0.0001)
    total_cost = sum(r.cost_usd for r in records)
    assert sum(t.cost_usd for t in by_backend.values()) == pytest.approx(total_cost)
    assert sum(t.savings_usd for t in by_backend.values()) == pytest.approx(0.0019)

    by_key = await store.totals(first, last, "key")
    assert {k: t.requests for k, t in by_key.items()} == {"k1": 1, "k2": 1, "anonymous": 1}
    by_model = await store.totals(first, last, "model")
    assert by_model["auto"].requests == 3


async def test_writes_are_idempotent_by_request_id(store: RecordStore) -> None:
    records = [record_to_dict(make_record("slm", cost_usd=0.5)) for _ in range(5)]
    assert await store.write_batch(records) == 5
    assert await store.write_batch(records) == 0
    assert await store.write_batch([*records[:2], record_to_dict(make_record("slm", cost_usd=0.5))]) == 1
    twin = record_to_dict(make_record("slm", cost_usd=0.5))
    assert await store.write_batch([twin, twin]) == 1  # a duplicate inside one batch counts once
    first, last = now_minutes()
    totals = (await store.totals(first, last, "route"))["slm"]
    assert totals.requests == 7
    assert totals.cost_usd == pytest.approx(3.5)


async def test_a_batch_larger_than_one_statement_is_written_whole(store: RecordStore) -> None:
    # 3,000 records make 12,000 fact rows: more bound values than one SQLite statement takes.
    records = [record_to_dict(make_record("slm", cost_usd=0.25)) for _ in range(3000)]
    assert await store.write_batch(records) == 3000
    first, last = now_minutes()
    totals = (await store.totals(first, last, "backend"))
    assert sum(item.requests for item in totals.values()) == 3000
    assert (await store.totals(first, last, "route"))["slm"].cost_usd == pytest.approx(750.0)


async def test_get_record_round_trip(store: RecordStore) -> None:
    record = make_record("slm>llm", escalated=True)
    record.extra["note"] = "kept"
    await store.write_batch([record_to_dict(record)])
    stored = await store.get_record(record.request_id)
    assert stored == record_to_dict(record)
    assert stored is not None and stored["calls"][0]["backend"] == "llm"
    assert await store.get_record("req-missing") is None


async def test_window_excludes_other_minutes(store: RecordStore) -> None:
    old = make_record("slm", created_at=time.time() - 7200)
    recent = make_record("slm")
    await store.write_batch([record_to_dict(old), record_to_dict(recent)])
    first, last = now_minutes()
    assert (await store.totals(first, last, "route"))["slm"].requests == 1
    old_minute = int(old.created_at // 60)
    assert (await store.totals(old_minute, old_minute, "route"))["slm"].requests == 1


async def test_percentiles_from_buckets_match_samples(store: RecordStore) -> None:
    latencies = [float(v) for v in range(1, 201)]  # 1..200 ms
    records = [make_record("slm", latency_ms=v, ttft_ms=v / 10) for v in latencies]
    await store.write_batch([record_to_dict(r) for r in records])
    first, last = now_minutes()
    body = (await store.totals(first, last, "route"))["slm"].to_json("slm")
    assert body["latency_ms"]["p50"] == pytest.approx(100, rel=0.05)
    assert body["latency_ms"]["p95"] == pytest.approx(190, rel=0.05)
    assert body["latency_ms"]["p99"] == pytest.approx(198, rel=0.05)
    assert body["ttft_ms"]["p50"] == pytest.approx(10, rel=0.05)


def test_bucket_percentile_error_is_bounded() -> None:
    for value in (0.07, 1.0, 13.3, 250.0, 9_000.0, 120_000.0):
        estimate = percentile({bucket_of(value): 1}, 0.5)
        assert estimate is not None and estimate == pytest.approx(value, rel=0.05)
    assert percentile({}, 0.5) is None


async def test_secrets_never_reach_the_store(store: RecordStore) -> None:
    record = make_record("llm")
    record.calls[0].extra.update({"api_key": "sk-secret", "Authorization": "Bearer sk-secret", "cached": 3})
    await store.write_batch([record_to_dict(record)])
    stored: Any = await store.get_record(record.request_id)
    assert "sk-secret" not in str(stored)
    assert stored["calls"][0]["extra"] == {"cached": 3}


async def test_concurrent_batches_count_once(store: RecordStore) -> None:
    records = [record_to_dict(make_record("slm", cost_usd=0.01)) for _ in range(40)]
    # The same records raced from several writers (e.g. two workers replaying one spool).
    results = await asyncio.gather(*(store.write_batch(records) for _ in range(4)))
    assert sum(results) == 40
    first, last = now_minutes()
    assert (await store.totals(first, last, "route"))["slm"].requests == 40
