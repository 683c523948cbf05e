"""Redis clients with a bounded, *blocking* connection pool, and how to tell "busy" from "down".

redis-py's default pool fails a command at once (``MaxConnectionsError``) when its cap is
reached, so a burst of requests beyond the cap turned into 503s and unbilled settlements.
A :class:`~redis.asyncio.BlockingConnectionPool` makes the caller wait for a connection
instead, up to ``pool_timeout_s``; only when no connection frees up in that time is the
gateway really over capacity (:func:`pool_exhausted`), which callers turn into a 429 with
``Retry-After`` rather than a 503. Every command holds its connection for one round trip
(the key store's steps are single Lua scripts), so a small pool serves many requests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # redis is imported only by processes that use it (the SQLite stores need none)
    import redis.asyncio as aioredis


@dataclass(frozen=True, slots=True)
class RedisPoolSettings:
    """``SLM_GATEWAY_REDIS_MAX_CONNECTIONS`` / ``SLM_GATEWAY_REDIS_POOL_TIMEOUT_S`` (per client, per process)."""

    max_connections: int = 64
    pool_timeout_s: float = 5.0


def redis_client(url: str, pool: RedisPoolSettings, *, connect_timeout_s: float, socket_timeout_s: float,
                 decode_responses: bool = True) -> aioredis.Redis:
    import redis.asyncio as aioredis

    connections = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=pool.max_connections, timeout=pool.pool_timeout_s, decode_responses=decode_responses,
        socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
    )
    return aioredis.Redis(connection_pool=connections)


def pool_exhausted(exc: BaseException) -> bool:
    """True when a command failed only because no pooled connection freed up in time."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, asyncio.TimeoutError | TimeoutError)
