"""Helpers shared by the tests/test_keys_*.py files (no tests here)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.auth.redis_keys import RedisKeyStore
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.auth.store import KeyStore

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "admin-" + uuid.uuid4().hex


def redis_listening(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def priced_policy(upstream_url: str, *, output_per_1m: float = 1000.0, input_per_1m: float = 0.0) -> dict[str, Any]:
    """Two public models on one fake upstream: ``cheap`` and ``other`` (for allow-list tests)."""
    backend = {"type": "openai", "base_url": f"{upstream_url}/v1", "model": "fake-model",
               "price": {"input_per_1m": input_per_1m, "output_per_1m": output_per_1m},
               "timeouts": {"connect": 2.0, "first_token": 10.0, "total": 30.0, "idle": 10.0}}
    return {
        "version": 1,
        "backends": {"llm": backend},
        "models": {"cheap": {"type": "static", "backend": "llm"}, "other": {"type": "static", "backend": "llm"}},
    }


def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def create_key(base_url: str, **spec: Any) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/v1/gateway/keys", json={"name": "test", **spec}, headers=admin_headers(),
                          timeout=10)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def key_info(base_url: str, key_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/gateway/keys/{key_id}", headers=admin_headers(), timeout=10)
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


def delete_redis_key(key_id: str, prefix: str = "slmgw:") -> None:
    """Remove one key's data from Redis (the e2e gateways use the default prefix)."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        digest = str(client.hget(f"{prefix}key:{key_id}", "hash") or "")
        names = list(client.scan_iter(match=f"{prefix}key:{key_id}*"))
        if digest:
            names.append(f"{prefix}keyhash:{digest}")
        if names:
            client.delete(*names)
        client.srem(f"{prefix}keys", key_id)
    finally:
        client.close()


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


FALLBACK_OUTPUT_PER_1M = 20.0  # 10 output tokens (max_tokens=10) cost $0.0002 on the paid fallback


def dead_url() -> str:
    """A loopback address nobody listens on: connecting fails at once (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def fallback_policy(upstream_url: str, dead: str) -> dict[str, Any]:
    """``primary``: a free backend that is down; its fallback ``paid`` is a priced upstream."""
    quick = {"connect": 1.0, "first_token": 5.0, "total": 20.0, "idle": 5.0}
    return {
        "version": 1,
        "backends": {
            "free-dead": {"type": "openai", "base_url": f"{dead}/v1", "model": "m", "timeouts": quick,
                          "price": {"input_per_1m": 0.0, "output_per_1m": 0.0},
                          "retry": {"max_attempts": 1}},
            "paid": {"type": "openai", "base_url": f"{upstream_url}/v1", "model": "fake-model", "timeouts": quick,
                     "price": {"input_per_1m": 0.0, "output_per_1m": FALLBACK_OUTPUT_PER_1M}},
        },
        "models": {"primary": {"type": "static", "backend": "free-dead"},
                   "paid": {"type": "static", "backend": "paid"}},
        "fallbacks": {"primary": ["paid"]},
    }


class QuotingUpstream:
    """An upstream that rejects every generation with an error quoting what it was sent (the
    bearer token, the body): what a careless provider does, for secret-scrubbing tests.
    :meth:`reply` decides the status, the error payload and extra headers."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []

    def reply(self, authorization: str, body: bytes) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        raise NotImplementedError

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
        self.authorizations.append(authorization)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, payload, headers = self.reply(authorization, body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *headers]})
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})


@asynccontextmanager
async def open_key_store(kind: str, tmp_path: Path, prefix: str) -> AsyncIterator[KeyStore]:
    """A fresh key store of ``kind`` (``sqlite`` in ``tmp_path``, or ``redis`` under a unique
    key prefix, deleted afterwards); skips the test when Redis is asked for and not running."""
    if kind == "sqlite":
        sqlite_store = SQLiteKeyStore(tmp_path / "keys.sqlite3")
        yield sqlite_store
        await sqlite_store.close()
        return
    if not redis_listening():
        pytest.skip("no Redis on 127.0.0.1:6379 (.ci/run starts one)")
    redis_store = RedisKeyStore(REDIS_URL, prefix=f"{prefix}-{uuid.uuid4().hex[:10]}:")
    yield redis_store
    await redis_store.delete_all()
    await redis_store.close()
