"""The embedded (SQLite) key store end to end: no Redis, a gateway process, the real CLI.

Smaller than the Redis suite: the same semantics are checked store-level in
test_keys_store.py; here a key created with ``slm-gateway keys create`` in the gateway's data
dir works over HTTP, budgets hold under concurrency, streams are charged, revocation is
immediate. Also: with no admin key, auth is off and /v1 is open (the default, loopback-only).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from gateway.cli import main
from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess
from tests.test_keys_support import ADMIN_KEY, admin_headers, create_key, key_info, priced_policy

CHAT = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
COST = 0.01


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(FakeConfig(completion_tokens=16, tokens_per_s=400)) as (url, _app):
        yield url


@pytest.fixture(scope="module")
def gateway(upstream: str) -> Iterator[GatewayProcess]:
    process = GatewayProcess(priced_policy(upstream), name="keys-sqlite", env={"SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY})
    try:
        yield process.start()
    finally:
        process.stop()


def _cli(gateway: GatewayProcess, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The real CLI entry point, in this process (a subprocess would re-import everything)."""
    capsys.readouterr()
    assert main(["keys", *args, "--data-dir", gateway.env["SLM_GATEWAY_DATA_DIR"]]) == 0
    return capsys.readouterr().out


async def _race(url: str, headers: dict[str, str], count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(
            client.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) for _ in range(count)
        ))


def test_cli_key_budget_stream_and_revoke(
    gateway: GatewayProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    created = json.loads(_cli(gateway, capsys, "create", "--name", "cli", "--budget-usd", str(3 * COST),
                              "--models", "cheap", "--tags", "team-a", "--json"))
    assert created["key"].startswith("sk-slmgw-") and created["models"] == ["cheap"]
    headers = {"authorization": f"Bearer {created['key']}"}
    responses = asyncio.run(_race(gateway.url, headers, 12))
    assert sum(r.status_code == 200 for r in responses) == 3
    assert {r.status_code for r in responses} == {200, 429}
    assert key_info(gateway.url, created["id"])["spent_usd"] == pytest.approx(3 * COST)

    streamed = create_key(gateway.url, name="stream", budget_usd=1.0)
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=streamed["key"], max_retries=0)
    chunks = list(client.chat.completions.create(**(CHAT | {"stream": True})))  # type: ignore[call-overload]
    assert chunks
    info = key_info(gateway.url, streamed["id"])
    assert info["spent_usd"] == pytest.approx(COST) and info["reserved_usd"] == 0

    listing = _cli(gateway, capsys, "list")
    assert created["id"] in listing and streamed["id"] in listing and created["key"] not in listing
    assert "revoked" in _cli(gateway, capsys, "revoke", streamed["id"])
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30,
                          headers={"authorization": f"Bearer {streamed['key']}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "key_revoked"
    db = (gateway.workdir / "data" / "keys.sqlite3").read_bytes()
    assert streamed["key"].encode() not in db and created["key"].encode() not in db


def test_admin_key_passes_without_limits(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=admin_headers(), timeout=30)
    assert response.status_code == 200
    assert "x-ratelimit-limit-requests" not in response.headers


def test_auth_off_without_admin_key(upstream: str) -> None:
    process = GatewayProcess(priced_policy(upstream), name="keys-open")
    try:
        process.start()
        assert httpx.get(f"{process.url}/v1/models", timeout=10).status_code == 200
        response = httpx.post(f"{process.url}/v1/chat/completions", json=CHAT, timeout=30)
        assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers
        assert "authentication is OFF" in process.log()
    finally:
        process.stop()
