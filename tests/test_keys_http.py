"""Keys, budgets and limits end to end: real gateway processes sharing real Redis, a fake upstream.

The fake upstream answers ``min(16, max_tokens)`` completion tokens; the policy prices output at
$1000 per 1M tokens and input at 0, so a ``max_tokens=10`` request reserves exactly what it
costs ($0.01) and the counts below are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess
from tests.test_keys_support import (
    ADMIN_KEY,
    REDIS_URL,
    admin_headers,
    create_key,
    delete_redis_key,
    key_info,
    priced_policy,
    redis_listening,
)

pytestmark = pytest.mark.skipif(not redis_listening(), reason="no Redis on 127.0.0.1:6379 (.ci/run starts one)")

COST = 0.01  # 10 tokens x $1000 / 1M
CHAT = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(FakeConfig(completion_tokens=16, tokens_per_s=400)) as (url, _app):
        yield url


@pytest.fixture(scope="module")
def replicas(upstream: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = {"REDIS_URL": REDIS_URL, "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    first = GatewayProcess(priced_policy(upstream), env=env, name="keys-a")
    second = GatewayProcess(priced_policy(upstream), env=env, name="keys-b")
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def keys_made() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for key_id in made:
        delete_redis_key(key_id)


def _key(base: str, made: list[str], **spec: object) -> dict[str, object]:
    created = create_key(base, **spec)
    made.append(str(created["id"]))
    return created


def test_auth_envelopes_with_the_openai_client(replicas: tuple[GatewayProcess, GatewayProcess],
                                               keys_made: list[str]) -> None:
    base = replicas[0].url
    for api_key in ("sk-slmgw-not-a-real-key", "wrong"):
        client = OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert caught.value.status_code == 401
        assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    missing = httpx.get(f"{base}/v1/models", timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"

    created = _key(base, keys_made, models=["cheap"])
    client = OpenAI(base_url=f"{base}/v1", api_key=str(created["key"]), max_retries=0)
    assert [m.id for m in client.models.list()] == ["cheap"]
    assert client.chat.completions.create(**CHAT).choices[0].message.content  # type: ignore[call-overload]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(**(CHAT | {"model": "other"}))  # type: ignore[call-overload]
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"

    # Admin endpoints never accept a virtual key; open endpoints stay open.
    for method, path in (("GET", "/v1/gateway/keys"), ("POST", "/v1/gateway/keys"), ("GET", "/v1/gateway/usage"),
                         ("DELETE", f"/v1/gateway/keys/{created['id']}")):
        response = httpx.request(method, f"{base}{path}", json={"name": "x"}, timeout=10,
                                 headers={"authorization": f"Bearer {created['key']}"})
        assert response.status_code == 403, (path, response.text)
    assert httpx.get(f"{base}/v1/gateway/usage", headers=admin_headers(), timeout=10).status_code == 200
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    listed = httpx.get(f"{base}/v1/gateway/keys", headers=admin_headers(), timeout=10).json()["data"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert "key" not in mine and "hash" not in mine


async def test_fifty_concurrent_requests_race_a_budget_that_fits_five(
    replicas: tuple[GatewayProcess, GatewayProcess], keys_made: list[str]
) -> None:
    created = _key(replicas[0].url, keys_made, budget_usd=5 * COST)
    headers = {"authorization": f"Bearer {created['key']}"}
    async with httpx.AsyncClient(timeout=60) as client:
        # Both replicas take half the requests: they share one budget through Redis.
        responses = await asyncio.gather(*(
            client.post(f"{replicas[i % 2].url}/v1/chat/completions", json=CHAT, headers=headers)
            for i in range(50)
        ))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == 5, [r.text for r in responses[:3]]
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} <= {"budget_reserved", "insufficient_quota"}
    charged = sum(float(r.headers["x-slm-gateway-cost-usd"]) for r in ok)
    info = key_info(replicas[1].url, str(created["id"]))
    assert info["spent_usd"] == pytest.approx(charged) and info["spent_usd"] == pytest.approx(5 * COST)
    assert info["spent_usd"] <= 5 * COST + 1e-12 and info["reserved_usd"] == 0
    after = httpx.post(f"{replicas[0].url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
    assert after.status_code == 429 and after.json()["error"]["code"] == "insufficient_quota"
    assert "Budget exhausted" in after.json()["error"]["message"]


def test_streamed_request_is_charged(replicas: tuple[GatewayProcess, GatewayProcess], keys_made: list[str]) -> None:
    base = replicas[0].url
    created = _key(base, keys_made, budget_usd=1.0)
    client = OpenAI(base_url=f"{base}/v1", api_key=str(created["key"]), max_retries=0)
    # No include_usage: the client never sees a usage chunk, the budget must still be charged.
    stream = client.chat.completions.create(**(CHAT | {"stream": True}))  # type: ignore[call-overload]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    info = key_info(base, str(created["id"]))
    assert info["spent_usd"] == pytest.approx(COST) and info["reserved_usd"] == 0


def test_stream_cut_by_the_client_releases_its_reservation(
    replicas: tuple[GatewayProcess, GatewayProcess], keys_made: list[str]
) -> None:
    base = replicas[0].url
    created = _key(base, keys_made, budget_usd=1.0)
    body = CHAT | {"stream": True, "max_tokens": 16}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {created['key']}"}) as response:
        assert response.status_code == 200
        for _ in response.iter_lines():
            break  # go away after the first event
    info = _wait_settled(base, str(created["id"]))
    assert info["reserved_usd"] == 0
    assert 0 <= float(str(info["spent_usd"])) <= 16 * COST / 10 + 1e-12  # what was generated, never the reservation


def _wait_settled(base: str, key_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 15
    info = key_info(base, key_id)
    while info["reserved_usd"] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        info = key_info(base, key_id)
    return info


def test_revoked_key_stops_at_once_on_every_replica(
    replicas: tuple[GatewayProcess, GatewayProcess], keys_made: list[str]
) -> None:
    first, second = replicas
    created = _key(first.url, keys_made)
    headers = {"authorization": f"Bearer {created['key']}"}
    for replica in replicas:
        response = httpx.post(f"{replica.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
        assert response.status_code == 200
    revoked = httpx.delete(f"{first.url}/v1/gateway/keys/{created['id']}", headers=admin_headers(), timeout=10)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    for replica in (second, first):  # the other replica first: no cache to wait out
        response = httpx.post(f"{replica.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "key_revoked"


def test_rpm_limit_with_retry_after_and_ratelimit_headers(
    replicas: tuple[GatewayProcess, GatewayProcess], keys_made: list[str]
) -> None:
    created = _key(replicas[0].url, keys_made, rpm=3, tpm=10_000)
    headers = {"authorization": f"Bearer {created['key']}"}
    remaining = []
    for i in range(3):
        response = httpx.post(f"{replicas[i % 2].url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(response.headers["x-ratelimit-remaining-tokens"]) < 10_000
        remaining.append(response.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    limited = httpx.post(f"{replicas[1].url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 50 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
