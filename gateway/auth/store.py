"""What a key store does, and which one a process uses (Redis when REDIS_URL is set, else SQLite).

Both stores give the same guarantees: admission (check limits, record the request, reserve
the worst-case cost) and settlement (replace the reservation by the real cost) are each one
atomic step, so concurrent requests on any number of replicas sharing the store can never
together reserve more than the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gateway.auth.keys import KeySpec, VirtualKey
from gateway.auth.limits import Admission
from gateway.redis_pool import RedisPoolSettings


class KeyStore(Protocol):
    async def create(self, spec: KeySpec) -> tuple[VirtualKey, str]:
        """Store a new key; return it and its secret (the only time the secret exists)."""
        ...

    async def list_keys(self) -> list[VirtualKey]: ...

    async def get(self, key_id: str) -> VirtualKey | None: ...

    async def find(self, secret: str) -> VirtualKey | None:
        """The key whose stored hash matches ``secret``, revoked or not; None when unknown."""
        ...

    async def revoke(self, key_id: str) -> bool: ...

    async def admit(self, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> Admission:
        """Check the key's limits by the store's own clock; if they pass, record and reserve."""
        ...

    async def extend(self, key_id: str, reservation_id: str, extra_nano: int) -> Admission:
        """Grow an admitted request's reservation by ``extra_nano`` if the budget holds it (another call)."""
        ...

    async def settle(self, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> None:
        """Replace the reservation by the real cost; idempotent by ``reservation_id``."""
        ...

    async def close(self) -> None: ...


def build_key_store(redis_url: str | None, data_dir: Path, *, redis_prefix: str = "slmgw:",
                    redis_pool: RedisPoolSettings | None = None) -> KeyStore:
    """The same choice as accounting: Redis if configured, else ``<data_dir>/keys.sqlite3``."""
    if redis_url:
        from gateway.auth.redis_keys import RedisKeyStore

        return RedisKeyStore(redis_url, prefix=redis_prefix, pool=redis_pool)
    from gateway.auth.sqlite_keys import SQLiteKeyStore

    return SQLiteKeyStore(data_dir / "keys.sqlite3")
