"""Issue 18: budgets hold across replicas sharing one Redis.

Three gateway processes on one Redis and one fake upstream: two separate single-worker
processes and one ``--workers 2`` (four event loops in all). Concurrent streamed requests
against one key go through all three at once; whatever route they take — the priced model
directly, or a free primary that is down and falls back to it — the key's spend never exceeds
its budget by more than one request's worth, and it equals what the served requests cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess
from tests.test_keys_support import (
    ADMIN_KEY,
    FALLBACK_OUTPUT_PER_1M,
    REDIS_URL,
    create_key,
    dead_url,
    delete_redis_key,
    fallback_policy,
    key_info,
    redis_listening,
)

pytestmark = pytest.mark.skipif(not redis_listening(), reason="no Redis on 127.0.0.1:6379 (.ci/run starts one)")

MAX_TOKENS = 10
ONE_REQUEST = MAX_TOKENS * FALLBACK_OUTPUT_PER_1M / 1e6
BUDGET = 10 * ONE_REQUEST + ONE_REQUEST / 2  # fits ten and a half requests
REQUESTS = 60


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[GatewayProcess]]:
    with serve_in_thread(FakeConfig(completion_tokens=16, tokens_per_s=100)) as (upstream, _app):
        policy = fallback_policy(upstream, dead_url())
        env = {"REDIS_URL": REDIS_URL, "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY}
        processes = [GatewayProcess(policy, env=env, name="replica-a"),
                     GatewayProcess(policy, env=env, name="replica-b"),
                     GatewayProcess(policy, env=env, name="replica-w2", extra_args=["--workers", "2"])]
        try:
            for process in processes:
                process.start(timeout=120)
            yield processes
        finally:
            for process in processes:
                process.stop()


async def _streamed(client: httpx.AsyncClient, url: str, model: str, secret: str) -> tuple[int, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
            "stream": True}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {secret}"}) as response:
        return response.status_code, await response.aread()


@pytest.mark.parametrize("model", ["paid", "primary"])
async def test_one_budget_across_three_replicas(replicas: list[GatewayProcess], model: str) -> None:
    created = create_key(replicas[0].url, budget_usd=BUDGET)
    try:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=REQUESTS)) as client:
            results = await asyncio.gather(*(
                _streamed(client, replicas[i % len(replicas)].url, model, str(created["key"])) for i in range(REQUESTS)
            ))
        served = [body for status, body in results if status == 200]
        assert served and all(body.rstrip().endswith(b"data: [DONE]") for body in served)
        assert {status for status, _ in results} <= {200, 429}
        info = key_info(replicas[1].url, str(created["id"]))
        print(f"{model}: served {len(served)}/{REQUESTS}, spent ${info['spent_usd']:.6f} of ${BUDGET:.6f}")
        assert info["reserved_usd"] == 0
        assert info["spent_usd"] <= BUDGET + ONE_REQUEST + 1e-12, (model, info, len(served))
        assert info["spent_usd"] == pytest.approx(len(served) * ONE_REQUEST)
    finally:
        delete_redis_key(str(created["id"]))
