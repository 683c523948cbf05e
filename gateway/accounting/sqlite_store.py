"""The embedded store: one SQLite file in the data dir (WAL), used when REDIS_URL is unset.

``records`` holds each record's JSON under its request id (the primary key makes writes
idempotent: ``INSERT OR IGNORE``, and a record's facts are only added when its row was new).
``facts`` holds one row per (record, dimension, group) from :func:`facts.contributions` —
the same contributions the Redis store counts — with the latency and TTFT bucket indices, so
usage is one ``GROUP BY`` and the percentiles match the Redis store's exactly. Its counter
columns are those of :mod:`gateway.accounting.counters`; :func:`migrate` adds the ones an
older file lacks and records the schema version in ``schema_version``.

sqlite3 calls run on the store's own thread (:mod:`gateway.sqlite_worker`); several gateway
worker processes may share the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.accounting.buckets import bucket_of
from gateway.accounting.counters import COUNTER_FIELDS, COUNTER_NAMES, CounterField
from gateway.accounting.facts import contributions, minute_of
from gateway.accounting.store import GroupTotals, StoreUnavailableError
from gateway.sqlite_worker import SQLiteWorker

T = TypeVar("T")

SCHEMA_VERSION = 2  # 1: fixed counter columns, no version table; 2: columns from counters.py

_FIXED_TABLES = (
    """CREATE TABLE IF NOT EXISTS records (
        request_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        minute INTEGER NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS facts_by_minute ON facts (dimension, minute)",
    "CREATE INDEX IF NOT EXISTS records_by_time ON records (created_at)",
)
_BUCKET_COLUMNS = ("lat_bucket", "ttft_bucket")
# Column order of our INSERTs; a migrated file may order them differently, so always named.
_FACT_COLUMNS = ("request_id", "dimension", "group_key", "minute", *COUNTER_NAMES, *_BUCKET_COLUMNS)


def _counter_column(counter: CounterField) -> str:
    return f"{counter.name} {counter.sql_type} NOT NULL DEFAULT 0"


def _facts_table() -> str:
    counters = ", ".join(_counter_column(c) for c in COUNTER_FIELDS)
    return (
        "CREATE TABLE IF NOT EXISTS facts (request_id TEXT NOT NULL, dimension TEXT NOT NULL, "
        f"group_key TEXT NOT NULL, minute INTEGER NOT NULL, {counters}, lat_bucket INTEGER, "
        "ttft_bucket INTEGER, PRIMARY KEY (request_id, dimension, group_key))"
    )


def migrate(connection: sqlite3.Connection) -> int:
    """Bring a store file to :data:`SCHEMA_VERSION`; return the version it had (0: new file).

    Creates what is missing, then adds every counter column the ``facts`` table lacks (a
    counter declared after the file was made): old rows read 0 for it. One transaction,
    taken with ``BEGIN IMMEDIATE`` so that worker processes opening the file together
    migrate it once; a file already current costs one read.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        existed = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'facts'").fetchone() is not None
        for statement in (*_FIXED_TABLES, _facts_table(), *_INDEXES):
            connection.execute(statement)
        row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
        found = int(row[0]) if row[0] is not None else (1 if existed else 0)
        present = {info[1] for info in connection.execute("PRAGMA table_info(facts)")}
        for counter in COUNTER_FIELDS:
            if counter.name not in present:
                connection.execute(f"ALTER TABLE facts ADD COLUMN {_counter_column(counter)}")
        if found < SCHEMA_VERSION:
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return found


class SQLiteRecordStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        # synchronous=NORMAL: durable at checkpoints; WAL keeps the file consistent.
        self._db = SQLiteWorker(path, "", thread_name="accounting-sqlite", pragmas=("synchronous=NORMAL",),
                                migrate=migrate)

    async def _run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run(function)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"sqlite failed: {exc}") from exc

    async def open(self) -> None:
        await self._run(lambda _connection: None)

    async def ping(self) -> bool:
        try:
            await self._run(lambda connection: connection.execute("SELECT 1").fetchone())
        except StoreUnavailableError:
            return False
        return True

    async def write_batch(self, records: Sequence[Mapping[str, Any]]) -> int:
        if not records:
            return 0
        return await self._run(lambda connection: _write(connection, records))

    async def totals(self, first_minute: int, last_minute: int, dimension: str) -> dict[str, GroupTotals]:
        return await self._run(lambda connection: _totals(connection, first_minute, last_minute, dimension))

    async def get_record(self, request_id: str) -> dict[str, Any] | None:
        def read(connection: sqlite3.Connection) -> dict[str, Any] | None:
            query = "SELECT data FROM records WHERE request_id = ?"
            row = connection.execute(query, (request_id,)).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        return await self._run(read)

    async def recent_records(self, limit: int) -> list[dict[str, Any]]:
        query = "SELECT data FROM records ORDER BY created_at DESC LIMIT ?"  # index records_by_time

        def read(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(orjson.loads(row[0])) for row in connection.execute(query, (limit,)).fetchall()]

        return await self._run(read)

    async def count_records(self) -> int:
        query = "SELECT COUNT(*) FROM records"
        return await self._run(lambda connection: int(connection.execute(query).fetchone()[0]))

    async def close(self) -> None:
        await self._db.close()


def _write(connection: sqlite3.Connection, records: Sequence[Mapping[str, Any]]) -> int:
    # A fixed handful of sqlite3 calls per batch (multi-row INSERTs), never one per record or
    # per row: every call and every stepped row releases and retakes the GIL, and while the
    # event loop keeps the GIL busy each retake waits ~1 ms. Row-at-a-time writes let the
    # writer fall 10,000 records behind at 1,000 requests/s; the rows are built first, in
    # one stretch of Python, then handed to SQLite in a few statements.
    rows_by_id = {str(record["request_id"]): record for record in reversed(records)}  # first copy wins
    limit = min(connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), 32_766)
    connection.execute("BEGIN IMMEDIATE")
    try:
        for stored in _stored_ids(connection, list(rows_by_id), limit):
            del rows_by_id[stored]  # already written: replays are idempotent
        record_rows = [
            (request_id, float(record["created_at"]), minute_of(record), orjson.dumps(record).decode())
            for request_id, record in rows_by_id.items()
        ]
        fact_rows = [row for request_id, record in rows_by_id.items() for row in _fact_rows(request_id, record)]
        _insert_many(connection, "INSERT INTO records (request_id, created_at, minute, data) VALUES", record_rows,
                     limit)
        _insert_many(connection, f"INSERT INTO facts ({', '.join(_FACT_COLUMNS)}) VALUES", fact_rows, limit)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return len(record_rows)


def _stored_ids(connection: sqlite3.Connection, ids: list[str], limit: int) -> list[str]:
    stored: list[str] = []
    for start in range(0, len(ids), limit):
        chunk = ids[start:start + limit]
        query = f"SELECT request_id FROM records WHERE request_id IN ({', '.join('?' * len(chunk))})"
        stored.extend(row[0] for row in connection.execute(query, chunk).fetchall())
    return stored


def _insert_many(connection: sqlite3.Connection, statement: str, rows: list[tuple[Any, ...]], limit: int) -> None:
    """``statement (?, ...), (?, ...), ...`` with as many rows per call as the variable limit allows."""
    if not rows:
        return
    width = len(rows[0])
    per_call = max(1, limit // width)
    placeholder = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per_call):
        chunk = rows[start:start + per_call]
        values = [value for row in chunk for value in row]
        connection.execute(f"{statement} {', '.join([placeholder] * len(chunk))}", values)


def _fact_rows(request_id: str, record: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    minute = minute_of(record)
    return [
        (
            request_id, dimension, group, minute,
            *(getattr(item, name) for name in COUNTER_NAMES),
            None if item.latency_ms is None else bucket_of(item.latency_ms),
            None if item.ttft_ms is None else bucket_of(item.ttft_ms),
        )
        for dimension, groups in contributions(record).items()
        for group, item in groups.items()
    ]


def _totals(connection: sqlite3.Connection, first: int, last: int, dimension: str) -> dict[str, GroupTotals]:
    where = "WHERE dimension = ? AND minute BETWEEN ? AND ?"
    params = (dimension, first, last)
    sums = ", ".join(f"SUM({column})" for column in COUNTER_NAMES)
    groups: dict[str, GroupTotals] = {}
    for row in connection.execute(f"SELECT group_key, {sums} FROM facts {where} GROUP BY group_key", params):
        totals = groups[row[0]] = GroupTotals()
        for column, value in zip(COUNTER_NAMES, row[1:], strict=True):
            totals.add_counter(column, value)
    for column, attribute in (("lat_bucket", "latency_hist"), ("ttft_bucket", "ttft_hist")):
        query = (
            f"SELECT group_key, {column}, COUNT(*) FROM facts {where} AND {column} IS NOT NULL "
            f"GROUP BY group_key, {column}"
        )
        for group, bucket, count in connection.execute(query, params):
            getattr(groups.setdefault(group, GroupTotals()), attribute)[int(bucket)] = int(count)
    return groups
