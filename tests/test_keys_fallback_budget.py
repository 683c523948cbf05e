"""Issue 18, defect 1: a route reached only through ``fallbacks`` must be paid for from the budget.

The scenario of the issue: a key with a $0.0009 budget, 40 concurrent streamed requests to a
model whose primary backend is free but down and whose fallback is priced. Every call the
request makes must have been reserved for before it is called (or be refused with a 429 in
OpenAI's envelope), so the key's spend never exceeds the budget by more than one request's worth.
Real gateway process, real Redis, the fake upstream as the priced fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
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

BUDGET = 0.0009
MAX_TOKENS = 10
ONE_REQUEST = MAX_TOKENS * FALLBACK_OUTPUT_PER_1M / 1e6  # $0.0002: the fake answers min(16, max_tokens) tokens


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    with serve_in_thread(FakeConfig(completion_tokens=16, tokens_per_s=200)) as (upstream, _app):
        process = GatewayProcess(fallback_policy(upstream, dead_url()), name="fallback-budget",
                                 env={"REDIS_URL": REDIS_URL, "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY})
        try:
            yield process.start(timeout=60)
        finally:
            process.stop()


async def _streamed(client: httpx.AsyncClient, url: str, secret: str) -> tuple[int, bytes, httpx.Headers]:
    body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
            "stream": True}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {secret}"}) as response:
        return response.status_code, await response.aread(), response.headers


async def test_forty_streamed_requests_through_a_priced_fallback_stay_within_the_budget(
    gateway: GatewayProcess,
) -> None:
    created = create_key(gateway.url, budget_usd=BUDGET)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            results = await asyncio.gather(*(_streamed(client, gateway.url, str(created["key"])) for _ in range(40)))
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert served, "the fallback must still answer while the budget lasts"
        assert all(headers.get("x-slm-gateway-fallback") == "paid" for _, _, headers in served)
        assert all(body.rstrip().endswith(b"data: [DONE]") for _, body, _ in served)
        for status, body, _ in refused:  # refused in OpenAI's envelope, with the codes the keys doc lists
            error = orjson.loads(body)["error"]
            assert status == 429 and error["code"] in {"budget_reserved", "insufficient_quota"}, body
        info = key_info(gateway.url, str(created["id"]))
        print(f"served {len(served)}/40, refused {len(refused)}, spent ${info['spent_usd']:.6f} of ${BUDGET}")
        assert info["reserved_usd"] == 0
        assert info["spent_usd"] <= BUDGET + ONE_REQUEST + 1e-12, (info, len(served))
        assert info["spent_usd"] == pytest.approx(len(served) * ONE_REQUEST)
    finally:
        delete_redis_key(str(created["id"]))
