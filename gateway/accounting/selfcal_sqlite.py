"""The embedded self-calibration store: ``<data dir>/selfcal.sqlite3`` (WAL), when REDIS_URL is unset.

Same promises as the Redis store (``selfcal_store.py``). Every step that reads and then writes —
the version compare-and-set, a budget hold, a settlement, a label append with its trim — is one
``BEGIN IMMEDIATE`` transaction, so the worker processes sharing the file see them atomically.
sqlite3 calls run on the store's own thread (:mod:`gateway.sqlite_worker`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson

from gateway.accounting.selfcal_settings import DEFAULT_HOLD_TTL_S, DEFAULT_MAX_LABELS
from gateway.accounting.selfcal_store import DRIFT, ShadowDay, StoreError
from gateway.core.selfcal import CalibrationState, Label
from gateway.sqlite_worker import SQLiteWorker

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, tier INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_by_tier ON labels (model, tier, seq);
CREATE TABLE IF NOT EXISTS tiers (
    model TEXT NOT NULL, tier INTEGER NOT NULL, labels_added INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0, state TEXT, drift_alarms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, tier));
CREATE TABLE IF NOT EXISTS shadow_days (
    model TEXT NOT NULL, day TEXT NOT NULL, spent_nano INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (model, day));
CREATE TABLE IF NOT EXISTS shadow_holds (
    hold_id TEXT PRIMARY KEY, model TEXT NOT NULL, day TEXT NOT NULL, nano INTEGER NOT NULL,
    lapses_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS holds_by_day ON shadow_holds (model, day);
"""


class SQLiteSelfCalStore:
    def __init__(self, path: Path, *, max_labels: int = DEFAULT_MAX_LABELS,
                 hold_ttl_s: float = DEFAULT_HOLD_TTL_S) -> None:
        self.path = path
        self.max_labels = max_labels
        self.hold_ttl_s = hold_ttl_s
        self._db = SQLiteWorker(path, _SCHEMA, thread_name="selfcal-sqlite", pragmas=("synchronous=NORMAL",))

    async def _run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run(function)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def _transaction(self, function: Callable[[sqlite3.Connection], T]) -> T:
        def run(connection: sqlite3.Connection) -> T:
            connection.execute("BEGIN IMMEDIATE")  # the write lock first: read-then-write stays atomic
            try:
                result = function(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        return await self._run(run)

    # --- labels and states ------------------------------------------------------------------------

    async def add_label(self, label: Label) -> int:
        data = orjson.dumps(label.to_dict()).decode()

        def add(connection: sqlite3.Connection) -> int:
            connection.execute("INSERT INTO labels (model, tier, data) VALUES (?, ?, ?)",
                               (label.model, label.tier, data))
            connection.execute(
                "DELETE FROM labels WHERE model = ? AND tier = ? AND seq <= (SELECT seq FROM labels WHERE model = ? "
                "AND tier = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (label.model, label.tier, label.model, label.tier, self.max_labels))
            row = connection.execute(
                "INSERT INTO tiers (model, tier, labels_added) VALUES (?, ?, 1) ON CONFLICT (model, tier) "
                "DO UPDATE SET labels_added = labels_added + 1 RETURNING labels_added",
                (label.model, label.tier)).fetchone()
            return int(row[0])

        return await self._transaction(add)

    async def labels(self, model: str, tier: int, limit: int) -> Sequence[Label]:
        if limit <= 0:
            return []

        def read(connection: sqlite3.Connection) -> list[Label]:
            rows = connection.execute(
                "SELECT data FROM labels WHERE model = ? AND tier = ? ORDER BY seq DESC LIMIT ?",
                (model, tier, limit)).fetchall()
            return [Label.from_dict(orjson.loads(row[0])) for row in reversed(rows)]

        return await self._run(read)

    async def get_state(self, model: str, tier: int) -> CalibrationState | None:
        def read(connection: sqlite3.Connection) -> CalibrationState | None:
            row = connection.execute("SELECT state FROM tiers WHERE model = ? AND tier = ?", (model, tier)).fetchone()
            return None if row is None or row[0] is None else CalibrationState.from_dict(orjson.loads(row[0]))

        return await self._run(read)

    async def put_state(self, state: CalibrationState) -> bool:
        data = orjson.dumps(state.to_dict()).decode()
        drift = 1 if state.reason == DRIFT else 0

        def put(connection: sqlite3.Connection) -> bool:
            row = connection.execute("SELECT version FROM tiers WHERE model = ? AND tier = ?",
                                     (state.model, state.tier)).fetchone()
            stored = int(row[0]) if row is not None else 0
            if state.version != stored + 1:
                return False
            connection.execute(
                "INSERT INTO tiers (model, tier, version, state, drift_alarms) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (model, tier) DO UPDATE SET version = excluded.version, state = excluded.state, "
                "drift_alarms = drift_alarms + excluded.drift_alarms",
                (state.model, state.tier, state.version, data, drift))
            return True

        return await self._transaction(put)

    async def cascades(self) -> list[tuple[str, int]]:
        def read(connection: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = connection.execute("SELECT model, tier FROM tiers ORDER BY model, tier").fetchall()
            return [(str(model), int(tier)) for model, tier in rows]

        return await self._run(read)

    async def label_count(self, model: str, tier: int) -> int:
        return await self._tier_int("labels_added", model, tier)

    async def drift_alarms(self, model: str, tier: int) -> int:
        return await self._tier_int("drift_alarms", model, tier)

    async def _tier_int(self, column: str, model: str, tier: int) -> int:
        query = f"SELECT {column} FROM tiers WHERE model = ? AND tier = ?"  # column: one of ours, never input

        def read(connection: sqlite3.Connection) -> int:
            row = connection.execute(query, (model, tier)).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._run(read)

    # --- the shadow ledger ------------------------------------------------------------------------

    async def hold(self, model: str, day: str, hold_id: str, nano: int, budget_nano: int) -> bool:
        def hold(connection: sqlite3.Connection) -> bool:
            now = time.time()
            connection.execute("DELETE FROM shadow_holds WHERE model = ? AND day = ? AND lapses_at <= ?",
                               (model, day, now))
            spent, held = _day(connection, model, day)
            if spent + held + nano > budget_nano:
                return False
            connection.execute(
                "INSERT INTO shadow_holds (hold_id, model, day, nano, lapses_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (hold_id) DO UPDATE SET nano = nano + excluded.nano, lapses_at = excluded.lapses_at",
                (hold_id, model, day, nano, now + self.hold_ttl_s))
            return True

        return await self._transaction(hold)

    async def settle(self, model: str, day: str, hold_id: str, cost_nano: int) -> None:
        def settle(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM shadow_holds WHERE hold_id = ?", (hold_id,))
            connection.execute(
                "INSERT INTO shadow_days (model, day, spent_nano) VALUES (?, ?, ?) ON CONFLICT (model, day) "
                "DO UPDATE SET spent_nano = spent_nano + excluded.spent_nano", (model, day, cost_nano))

        await self._transaction(settle)

    async def shadow_day(self, model: str, day: str) -> ShadowDay:
        def read(connection: sqlite3.Connection) -> ShadowDay:
            connection.execute("DELETE FROM shadow_holds WHERE model = ? AND day = ? AND lapses_at <= ?",
                               (model, day, time.time()))
            spent, held = _day(connection, model, day)
            return ShadowDay(spent, held)

        return await self._transaction(read)

    async def close(self) -> None:
        await self._db.close()


def _day(connection: sqlite3.Connection, model: str, day: str) -> tuple[int, int]:
    spent = connection.execute("SELECT spent_nano FROM shadow_days WHERE model = ? AND day = ?",
                               (model, day)).fetchone()
    held = connection.execute("SELECT COALESCE(SUM(nano), 0) FROM shadow_holds WHERE model = ? AND day = ?",
                              (model, day)).fetchone()
    return (int(spent[0]) if spent is not None else 0), int(held[0])
