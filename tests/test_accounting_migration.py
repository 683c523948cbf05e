"""The SQLite store's migration: files written by older gateways open, keep their rows, and
gain the counter columns declared since (gateway/accounting/counters.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import orjson

from gateway.accounting.counters import COUNTER_NAMES
from gateway.accounting.facts import record_to_dict
from gateway.accounting.sqlite_store import SCHEMA_VERSION, SQLiteRecordStore
from gateway.core.record import RequestRecord

# The schema as main 99f8d61 created it: fixed counter columns, no version table.
SCHEMA_BEFORE_VERSIONS = """
CREATE TABLE records (request_id TEXT PRIMARY KEY, created_at REAL NOT NULL, minute INTEGER NOT NULL,
                      data TEXT NOT NULL);
CREATE TABLE facts (
    request_id TEXT NOT NULL, dimension TEXT NOT NULL, group_key TEXT NOT NULL, minute INTEGER NOT NULL,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, savings_usd REAL NOT NULL, escalated INTEGER NOT NULL, errors INTEGER NOT NULL,
    lat_bucket INTEGER, ttft_bucket INTEGER, PRIMARY KEY (request_id, dimension, group_key)
);
CREATE INDEX facts_by_minute ON facts (dimension, minute);
CREATE INDEX records_by_time ON records (created_at);
"""
# An older counter set still: as if savings_usd and errors had been declared later.
SCHEMA_FEWER_COUNTERS = SCHEMA_BEFORE_VERSIONS.replace(
    "cost_usd REAL NOT NULL, savings_usd REAL NOT NULL, escalated INTEGER NOT NULL, errors INTEGER NOT NULL,",
    "cost_usd REAL NOT NULL, escalated INTEGER NOT NULL,",
)


def old_file(path: Path, schema: str, minute: int) -> None:
    """An old store file holding one request on route ``slm`` (3 prompt, 2 completion tokens)."""
    with sqlite3.connect(path) as connection:
        connection.executescript(schema)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(facts)")]
        connection.execute("INSERT INTO records VALUES (?, ?, ?, ?)",
                           ("req-old", minute * 60.0, minute, orjson.dumps({"request_id": "req-old"}).decode()))
        values = {"request_id": "req-old", "dimension": "route", "group_key": "slm", "minute": minute,
                  "requests": 1, "prompt_tokens": 3, "completion_tokens": 2, "cost_usd": 0.5, "savings_usd": 0.25,
                  "escalated": 1, "errors": 1, "lat_bucket": None, "ttft_bucket": None}
        connection.execute(f"INSERT INTO facts ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           [values[c] for c in columns])


def new_record(created_at: float) -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{uuid.uuid4().hex}", public_model="auto", endpoint="chat", stream=False,
        created_at=created_at, route="slm", status="upstream_error", latency_ms=50.0, prompt_tokens=10,
        completion_tokens=5, cost_usd=1.0, savings_usd=2.0, escalated=True,
    )


def columns_and_version(path: Path) -> tuple[list[str], list[int]]:
    with sqlite3.connect(path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(facts)")]
        versions = [int(row[0]) for row in connection.execute("SELECT version FROM schema_version")]
    return columns, versions


async def open_write_read(path: Path, created_at: float) -> dict[str, float]:
    store = SQLiteRecordStore(path)
    try:
        await store.open()
        assert await store.write_batch([record_to_dict(new_record(created_at))]) == 1
        minute = int(created_at // 60)
        totals = (await store.totals(minute, minute, "route"))["slm"]
        return {name: getattr(totals, name) for name in COUNTER_NAMES}
    finally:
        await store.close()


def test_a_file_from_before_the_version_table_opens_and_is_versioned(tmp_path: Path) -> None:
    path, now = tmp_path / "records.sqlite3", time.time()
    old_file(path, SCHEMA_BEFORE_VERSIONS, int(now // 60))
    totals = asyncio.run(open_write_read(path, now))
    assert totals == {"requests": 2, "prompt_tokens": 13, "completion_tokens": 7, "cost_usd": 1.5,
                      "savings_usd": 2.25, "escalated": 2, "errors": 2, "draft_tokens": 0, "accepted_tokens": 0,
                      "speculative_tokens": 0, "target_passes": 0, "shadow_jobs": 0, "shadow_cost_usd": 0.0}
    columns, versions = columns_and_version(path)
    assert set(COUNTER_NAMES) <= set(columns) and versions == [SCHEMA_VERSION]


def test_missing_counter_columns_are_added_and_old_rows_count_zero(tmp_path: Path) -> None:
    path, now = tmp_path / "records.sqlite3", time.time()
    old_file(path, SCHEMA_FEWER_COUNTERS, int(now // 60))
    assert "savings_usd" not in fact_columns(path)
    totals = asyncio.run(open_write_read(path, now))
    # The old row had no savings / errors columns: it adds 0 to them, the new row its own.
    assert totals["savings_usd"] == 2.0 and totals["errors"] == 1
    assert totals["requests"] == 2 and totals["prompt_tokens"] == 13 and totals["escalated"] == 2
    columns, versions = columns_and_version(path)
    # Appended in declaration order (inserts name their columns): the two this old file lacked,
    # then the speculative and shadow counters, which no version-1 file had.
    assert columns[-8:] == ["savings_usd", "errors", "draft_tokens", "accepted_tokens", "speculative_tokens",
                            "target_passes", "shadow_jobs", "shadow_cost_usd"]
    assert versions == [SCHEMA_VERSION]


def test_migration_is_idempotent_and_concurrent_openers_agree(tmp_path: Path) -> None:
    path, now = tmp_path / "records.sqlite3", time.time()
    old_file(path, SCHEMA_FEWER_COUNTERS, int(now // 60))

    async def two_at_once() -> None:
        # Two stores (two connections, two threads) open the old file together: one migrates.
        await asyncio.gather(open_write_read(path, now), open_write_read(path, now + 0.001))

    asyncio.run(two_at_once())
    asyncio.run(open_write_read(path, now + 0.002))
    columns, versions = columns_and_version(path)
    assert columns.count("savings_usd") == 1 and versions == [SCHEMA_VERSION]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 4


def fact_columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[1] for row in connection.execute("PRAGMA table_info(facts)")]
