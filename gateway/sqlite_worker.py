"""One SQLite connection owned by one thread, for the embedded stores (accounting, keys).

sqlite3 calls block, so each store runs them all on its own dedicated thread that owns the
connection (opened lazily there, in WAL mode, with the store's schema); the event loop only
awaits them. ``sqlite3.Error`` passes through: each store translates it into its own error.
Several gateway worker processes may share a file (WAL + a busy timeout).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SQLiteWorker:
    def __init__(
        self, path: Path, schema: str, *, thread_name: str, pragmas: Sequence[str] = (),
        migrate: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        self.path = path
        self._schema = schema
        self._migrate = migrate  # run once per connection, after the schema script
        self._pragmas = tuple(pragmas)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._connection: sqlite3.Connection | None = None

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, function)

    def _call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            self._connection = self._connect()
        return function(self._connection)

    @staticmethod
    def _enable_wal(connection: sqlite3.Connection, patience_s: float = 10.0) -> None:
        """Switch the file to WAL. Leaving rollback mode needs the file to itself, and SQLite
        answers "database is locked" at once rather than through the busy timeout while another
        process or thread holds it (two workers opening an old file together): retry for as long
        as the busy timeout would have waited."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._enable_wal(connection)
        for pragma in self._pragmas:
            connection.execute(f"PRAGMA {pragma}")
        connection.executescript(self._schema)
        if self._migrate is not None:
            self._migrate(connection)
        return connection

    async def close(self) -> None:
        def close_connection() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        if self._connection is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, close_connection)
        self._executor.shutdown(wait=True)
