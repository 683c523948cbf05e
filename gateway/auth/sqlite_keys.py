"""Virtual keys in the embedded SQLite file ``<data_dir>/keys.sqlite3`` (no Redis).

Same semantics as the Redis store: admission and settlement each run in one
``BEGIN IMMEDIATE`` transaction (SQLite's write lock, which also serialises several gateway
worker processes sharing the file), on one thread that owns the connection — the process
lock. The rules themselves are :func:`gateway.auth.limits.decide`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.auth.keys import KeySpec, VirtualKey, hash_secret, new_key_id, new_pepper, new_secret, same_hash
from gateway.auth.limits import (
    BUDGET,
    BUDGET_BUSY,
    EXPIRED,
    OK,
    RESERVATION_TTL_S,
    REVOKED,
    UNKNOWN,
    WINDOW_S,
    Admission,
    decide,
)
from gateway.core.errors import UpstreamUnavailableError
from gateway.sqlite_worker import SQLiteWorker

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    budget_nano INTEGER, spent_nano INTEGER NOT NULL DEFAULT 0, reserved_nano INTEGER NOT NULL DEFAULT 0,
    rpm INTEGER, tpm INTEGER, models TEXT NOT NULL, tags TEXT NOT NULL,
    expires_at REAL, revoked INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, cost_nano INTEGER NOT NULL, lapses_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_events (
    key_id TEXT NOT NULL, reservation_id TEXT NOT NULL, at REAL NOT NULL, tokens INTEGER NOT NULL,
    PRIMARY KEY (key_id, reservation_id)
);
CREATE INDEX IF NOT EXISTS rate_events_by_time ON rate_events (key_id, at);
CREATE TABLE IF NOT EXISTS settled (reservation_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS settled_by_time ON settled (at);
"""

SETTLED_TTL_S = 7 * 86_400  # how long a settlement is remembered (journal replays happen well within it)

_COLUMNS = ("id, name, hash, budget_nano, spent_nano, reserved_nano, rpm, tpm, models, tags, expires_at, revoked, "
            "created_at")


def _row_to_key(row: tuple[Any, ...]) -> VirtualKey:
    return VirtualKey(
        id=row[0], name=row[1], hash=row[2], budget_nano=row[3], spent_nano=row[4], reserved_nano=row[5],
        rpm=row[6], tpm=row[7], models=tuple(orjson.loads(row[8])), tags=tuple(orjson.loads(row[9])),
        expires_at=row[10], revoked=bool(row[11]), created_at=row[12],
    )


class SQLiteKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SQLiteWorker(path, _SCHEMA, thread_name="keys-sqlite")
        self._pepper: str | None = None

    async def _run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run(function)
        except sqlite3.Error as exc:
            raise UpstreamUnavailableError(f"the key store (sqlite) failed: {exc}",
                                           code="key_store_unavailable") from exc

    async def pepper(self) -> str:
        if self._pepper is None:
            self._pepper = await self._run(_pepper)
        return self._pepper

    async def create(self, spec: KeySpec) -> tuple[VirtualKey, str]:
        secret = new_secret()
        key = spec.build(new_key_id(), hash_secret(await self.pepper(), secret))

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.id, key.name, key.hash, key.budget_nano, 0, 0, key.rpm, key.tpm,
                 orjson.dumps(list(key.models)).decode(), orjson.dumps(list(key.tags)).decode(),
                 key.expires_at, 0, key.created_at),
            )

        await self._run(insert)
        return key, secret

    async def list_keys(self) -> list[VirtualKey]:
        def select(connection: sqlite3.Connection) -> list[VirtualKey]:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created_at").fetchall()
            return [_row_to_key(row) for row in rows]

        return await self._run(select)

    async def get(self, key_id: str) -> VirtualKey | None:
        return await self._run(lambda connection: _get(connection, "id", key_id))

    async def find(self, secret: str) -> VirtualKey | None:
        digest = hash_secret(await self.pepper(), secret)
        key = await self._run(lambda connection: _get(connection, "hash", digest))
        return key if key is not None and same_hash(key.hash, digest) else None

    async def revoke(self, key_id: str) -> bool:
        def update(connection: sqlite3.Connection) -> bool:
            return connection.execute("UPDATE keys SET revoked = 1 WHERE id = ?", (key_id,)).rowcount == 1

        return await self._run(update)

    async def admit(self, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> Admission:
        return await self._run(lambda c: _transaction(c, lambda: _admit(c, key_id, reservation_id, cost_nano, tokens)))

    async def extend(self, key_id: str, reservation_id: str, extra_nano: int) -> Admission:
        return await self._run(lambda c: _transaction(c, lambda: _extend(c, key_id, reservation_id, extra_nano)))

    async def settle(self, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> None:
        await self._run(lambda c: _transaction(c, lambda: _settle(c, key_id, reservation_id, cost_nano, tokens)))

    async def close(self) -> None:
        await self._db.close()


def _transaction(connection: sqlite3.Connection, work: Callable[[], T]) -> T:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


def _pepper(connection: sqlite3.Connection) -> str:
    connection.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('pepper', ?)", (new_pepper(),))
    row = connection.execute("SELECT value FROM meta WHERE name = 'pepper'").fetchone()
    return str(row[0])


def _get(connection: sqlite3.Connection, column: str, value: str) -> VirtualKey | None:
    row = connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else _row_to_key(row)


def _usable_key(connection: sqlite3.Connection, key_id: str, now: float) -> VirtualKey | Admission:
    """The key, or the refusal that ends the call when it is unknown, revoked or expired."""
    key = _get(connection, "id", key_id)
    if key is None:
        return Admission(UNKNOWN)
    if key.revoked:
        return Admission(REVOKED)
    if key.expired(now):
        return Admission(EXPIRED)
    return key


def _admit(connection: sqlite3.Connection, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> Admission:
    now = time.time()
    key = _usable_key(connection, key_id, now)
    if isinstance(key, Admission):
        return key
    connection.execute("DELETE FROM reservations WHERE key_id = ? AND lapses_at <= ?", (key_id, now))
    reserved = connection.execute(
        "SELECT COALESCE(SUM(cost_nano), 0) FROM reservations WHERE key_id = ?", (key_id,)
    ).fetchone()[0]
    connection.execute("DELETE FROM rate_events WHERE key_id = ? AND at <= ?", (key_id, now - WINDOW_S))
    events = connection.execute(
        "SELECT at, tokens FROM rate_events WHERE key_id = ? ORDER BY at", (key_id,)
    ).fetchall()
    admission = decide(
        rpm=key.rpm, tpm=key.tpm, budget_nano=key.budget_nano, spent_nano=key.spent_nano, reserved_nano=reserved,
        request_times=[at for at, _ in events], token_events=[(at, t) for at, t in events],
        cost_nano=cost_nano, tokens=tokens, now=now,
    )
    if admission.ok:
        connection.execute("INSERT INTO rate_events VALUES (?, ?, ?, ?)", (key_id, reservation_id, now, tokens))
        connection.execute("INSERT INTO reservations VALUES (?, ?, ?, ?)",
                           (reservation_id, key_id, cost_nano, now + RESERVATION_TTL_S))
    connection.execute("UPDATE keys SET reserved_nano = ? WHERE id = ?",
                       (reserved + (cost_nano if admission.ok else 0), key_id))
    return admission


def _extend(connection: sqlite3.Connection, key_id: str, reservation_id: str, extra_nano: int) -> Admission:
    """Grow one reservation if the budget holds it with every other open one (see redis_keys._EXTEND)."""
    now = time.time()
    key = _usable_key(connection, key_id, now)
    if isinstance(key, Admission):
        return key
    connection.execute("DELETE FROM reservations WHERE key_id = ? AND lapses_at <= ? AND id != ?",
                       (key_id, now, reservation_id))
    row = connection.execute("SELECT cost_nano FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
    own = int(row[0]) if row else 0
    reserved = connection.execute(
        "SELECT COALESCE(SUM(cost_nano), 0) FROM reservations WHERE key_id = ?", (key_id,)
    ).fetchone()[0]
    if key.budget_nano is not None and key.spent_nano + own + extra_nano > key.budget_nano:
        return Admission(BUDGET)
    if key.budget_nano is not None and key.spent_nano + reserved + extra_nano > key.budget_nano:
        return Admission(BUDGET_BUSY, 1.0)
    connection.execute(
        "INSERT INTO reservations VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET cost_nano = cost_nano + ?",
        (reservation_id, key_id, extra_nano, now + RESERVATION_TTL_S, extra_nano))
    connection.execute("UPDATE keys SET reserved_nano = ? WHERE id = ?", (reserved + extra_nano, key_id))
    return Admission(OK)


def _settle(connection: sqlite3.Connection, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> None:
    now = time.time()
    connection.execute("DELETE FROM settled WHERE at < ?", (now - SETTLED_TTL_S,))
    if connection.execute("INSERT OR IGNORE INTO settled VALUES (?, ?)", (reservation_id, now)).rowcount == 0:
        return  # already settled: a replay from the journal, or a retry after an ambiguous failure
    connection.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
    connection.execute("UPDATE rate_events SET tokens = ? WHERE key_id = ? AND reservation_id = ?",
                       (tokens, key_id, reservation_id))
    connection.execute(
        "UPDATE keys SET spent_nano = spent_nano + ?, "
        "reserved_nano = (SELECT COALESCE(SUM(cost_nano), 0) FROM reservations WHERE key_id = ?) WHERE id = ?",
        (cost_nano, key_id, key_id),
    )
