"""Where /v1/responses keeps answers for ``previous_response_id``: Redis, or SQLite embedded.

A stored entry is the Response object and the conversation it ended (as chat messages,
instructions excluded: OpenAI does not carry them over), so a follow-up request continues
it. Entries expire after 30 days, as OpenAI keeps responses. The store is opened on first
use (a gateway that never serves /v1/responses opens nothing) and closed with the app.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.redis_pool import RedisPoolSettings, redis_client
from gateway.sqlite_worker import SQLiteWorker

if TYPE_CHECKING:
    import sqlite3

TTL_S = 30 * 24 * 3600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, body BLOB NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires);
"""


class ResponseStore(Protocol):
    async def save(self, response_id: str, entry: dict[str, Any]) -> None: ...
    async def load(self, response_id: str) -> dict[str, Any] | None: ...
    async def close(self) -> None: ...


class SQLiteResponseStore:
    def __init__(self, path: Path) -> None:
        self._worker = SQLiteWorker(path, _SCHEMA, thread_name="responses-store")

    async def save(self, response_id: str, entry: dict[str, Any]) -> None:
        body, expires = orjson.dumps(entry), time.time() + TTL_S

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO responses (id, body, expires) VALUES (?, ?, ?)",
                       (response_id, body, expires))
            db.execute("DELETE FROM responses WHERE expires < ?", (time.time(),))

        await self._worker.run(write)

    async def load(self, response_id: str) -> dict[str, Any] | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT body FROM responses WHERE id = ? AND expires >= ?",
                             (response_id, time.time())).fetchone()
            return bytes(row[0]) if row else None

        body = await self._worker.run(read)
        loaded = orjson.loads(body) if body is not None else None
        return loaded if isinstance(loaded, dict) else None

    async def close(self) -> None:
        await self._worker.close()


class RedisResponseStore:
    def __init__(self, url: str, pool: RedisPoolSettings) -> None:
        self._redis = redis_client(url, pool, connect_timeout_s=2.0, socket_timeout_s=5.0, decode_responses=False)

    async def save(self, response_id: str, entry: dict[str, Any]) -> None:
        await self._redis.set(f"slmgw:response:{response_id}", orjson.dumps(entry), ex=TTL_S)

    async def load(self, response_id: str) -> dict[str, Any] | None:
        body = await self._redis.get(f"slmgw:response:{response_id}")
        loaded = orjson.loads(body) if body else None
        return loaded if isinstance(loaded, dict) else None

    async def close(self) -> None:
        await self._redis.aclose()


def open_response_store(redis_url: str | None, data_dir: Path, pool: RedisPoolSettings) -> ResponseStore:
    if redis_url:
        return RedisResponseStore(redis_url, pool)
    return SQLiteResponseStore(data_dir / "responses.sqlite")
