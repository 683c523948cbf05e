"""Issue 18, defect 2: a healthy Redis must not run out of connections under concurrency.

250 concurrent requests with a virtual key against one gateway process and real Redis:
callers wait for a pooled connection instead of failing, so nothing answers 503 and no
settlement fails (``MaxConnectionsError``); every served request is billed (the key's spend is
the sum of the served requests' cost headers and nothing stays reserved). With a pool far too
small for the load (one connection, 50 ms of patience) the gateway sheds load with 429 +
Retry-After — and still bills every request it served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess
from tests.test_keys_support import (
    ADMIN_KEY,
    REDIS_URL,
    create_key,
    delete_redis_key,
    key_info,
    priced_policy,
    redis_listening,
)

pytestmark = pytest.mark.skipif(not redis_listening(), reason="no Redis on 127.0.0.1:6379 (.ci/run starts one)")

CHAT = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
CONCURRENCY = 250


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(FakeConfig(completion_tokens=4)) as (url, _app):
        yield url


def _gateway(upstream: str, name: str, **env: str) -> GatewayProcess:
    return GatewayProcess(priced_policy(upstream), name=name,
                          env={"REDIS_URL": REDIS_URL, "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, **env})


async def _wave(url: str, secret: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(*(
            client.post(f"{url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})
            for _ in range(count)
        ))


def _check_billing(process: GatewayProcess, key_id: str, responses: list[httpx.Response],
                   settle_wait_s: float = 0.0) -> list[httpx.Response]:
    served = [r for r in responses if r.status_code == 200]
    deadline = time.monotonic() + settle_wait_s  # a settlement that could not get a connection is retried
    info = key_info(process.url, key_id)
    while info["reserved_usd"] != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        info = key_info(process.url, key_id)
    charged = sum(float(r.headers["x-slm-gateway-cost-usd"]) for r in served)
    assert info["reserved_usd"] == 0, info
    assert info["spent_usd"] == pytest.approx(charged, abs=1e-9), (info, len(served))
    assert "MaxConnectionsError" not in process.log(), process.log()[-3000:]
    return served


async def test_250_concurrent_requests_wait_for_a_connection_and_are_all_billed(upstream: str) -> None:
    process = _gateway(upstream, "pool").start(timeout=60)
    created = create_key(process.url, budget_usd=1000.0)
    try:
        responses = [*await _wave(process.url, str(created["key"]), CONCURRENCY),
                     *await _wave(process.url, str(created["key"]), CONCURRENCY)]
        statuses = sorted({r.status_code for r in responses})
        assert statuses == [200], [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200][:5]
        assert len(_check_billing(process, str(created["id"]), responses)) == 2 * CONCURRENCY
        assert "could not settle" not in process.log()  # every settlement went through at once
    finally:
        delete_redis_key(str(created["id"]))
        process.stop()


async def test_a_pool_too_small_sheds_load_with_429_and_bills_what_it_served(upstream: str) -> None:
    process = _gateway(upstream, "pool-tiny", SLM_GATEWAY_REDIS_MAX_CONNECTIONS="1",
                       SLM_GATEWAY_REDIS_POOL_TIMEOUT_S="0.05").start(timeout=60)
    created = create_key(process.url, budget_usd=1000.0)
    try:
        responses = await _wave(process.url, str(created["key"]), CONCURRENCY)
        shed = [r for r in responses if r.status_code != 200]
        assert shed, "one connection with 50 ms of patience cannot carry 250 requests at once"
        for response in shed:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "gateway_overloaded"
            assert int(response.headers["retry-after"]) >= 1
        assert _check_billing(process, str(created["id"]), responses, settle_wait_s=30.0)
    finally:
        delete_redis_key(str(created["id"]))
        process.stop()
