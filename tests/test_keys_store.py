"""The key stores themselves: atomic reservations under concurrency, windows, hashing.

Redis (real server, a unique prefix per test, deleted afterwards) and the embedded SQLite
store run the same tests: same semantics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.auth.estimate import reachable_backends, worst_case
from gateway.auth.keys import NANO_PER_USD, KeySpec, hash_secret, parse_expiry
from gateway.auth.limits import BUDGET, BUDGET_BUSY, EXPIRED, OK, REVOKED, RPM, TPM, TPM_TOO_LARGE, retry_after_tokens
from gateway.auth.redis_keys import RedisKeyStore
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.auth.store import KeyStore
from policies.schema import Policy
from tests.test_keys_support import REDIS_URL, open_key_store, redis_listening

RESERVATION = 10_000_000  # nano-dollars: $0.01


@pytest.fixture(params=["redis", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_key_store(request.param, tmp_path, "test-keys") as key_store:
        yield key_store


async def test_fifty_concurrent_reservations_never_overspend(store: KeyStore) -> None:
    key, _ = await store.create(KeySpec(name="race", budget_usd=5 * RESERVATION / NANO_PER_USD))
    results = await asyncio.gather(*(store.admit(key.id, f"r{i}", RESERVATION, 10) for i in range(50)))
    admitted = [i for i, result in enumerate(results) if result.ok]
    assert len(admitted) == 5
    assert {r.outcome for r in results if not r.ok} == {BUDGET_BUSY}
    stored = await store.get(key.id)
    assert stored is not None and stored.reserved_nano == 5 * RESERVATION and stored.spent_nano == 0

    # Each admitted request really cost 60% of its reservation, settled concurrently.
    await asyncio.gather(*(store.settle(key.id, f"r{i}", RESERVATION * 6 // 10, 7) for i in admitted))
    stored = await store.get(key.id)
    assert stored is not None and stored.reserved_nano == 0 and stored.spent_nano == 5 * RESERVATION * 6 // 10

    # Two more 60% requests fit in the remaining 40%? No: only reservations that fit are admitted.
    second = await asyncio.gather(*(store.admit(key.id, f"s{i}", RESERVATION, 10) for i in range(50)))
    assert sum(result.ok for result in second) == 2  # $0.02 left = two $0.01 reservations
    await asyncio.gather(*(store.settle(key.id, f"s{i}", RESERVATION, 10) for i, r in enumerate(second) if r.ok))
    stored = await store.get(key.id)
    assert stored is not None and stored.spent_nano <= 5 * RESERVATION
    assert (await store.admit(key.id, "t", RESERVATION, 10)).outcome == BUDGET


async def test_rpm_sliding_window_and_retry_after(store: KeyStore) -> None:
    key, _ = await store.create(KeySpec(name="rpm", rpm=3))
    outcomes = [await store.admit(key.id, f"r{i}", 0, 1) for i in range(4)]
    assert [o.outcome for o in outcomes] == [OK, OK, OK, RPM]
    assert [o.limits.requests_in_window for o in outcomes[:3]] == [1, 2, 3]
    assert outcomes[3].retry_after_s is not None and 55 < outcomes[3].retry_after_s <= 60


async def test_tpm_counts_estimates_then_real_tokens(store: KeyStore) -> None:
    key, _ = await store.create(KeySpec(name="tpm", tpm=100))
    assert (await store.admit(key.id, "big", 0, 101)).outcome == TPM_TOO_LARGE
    first = await store.admit(key.id, "a", 0, 80)
    assert first.ok and first.limits.tokens_in_window == 80
    assert (await store.admit(key.id, "b", 0, 30)).outcome == TPM  # 80 estimated + 30 > 100
    await store.settle(key.id, "a", 0, 20)  # it really used 20 tokens
    second = await store.admit(key.id, "b", 0, 30)
    assert second.ok and second.limits.tokens_in_window == 50


async def test_revoked_and_expired_keys_are_refused(store: KeyStore) -> None:
    key, secret = await store.create(KeySpec(name="gone"))
    assert (await store.admit(key.id, "a", 0, 1)).ok
    assert await store.revoke(key.id)
    assert (await store.admit(key.id, "b", 0, 1)).outcome == REVOKED
    found = await store.find(secret)
    assert found is not None and found.revoked
    assert not await store.revoke("key_missing")
    old, _ = await store.create(KeySpec(name="old", expires_at=time.time() - 1))
    assert (await store.admit(old.id, "c", 0, 1)).outcome == EXPIRED


async def test_lookup_by_peppered_hash(store: KeyStore) -> None:
    key, secret = await store.create(KeySpec(name="lookup", models=("a", "b"), tags=("team-x",)))
    assert secret.startswith("sk-slmgw-") and len(secret) > 40
    found = await store.find(secret)
    assert found is not None and found.id == key.id and found.models == ("a", "b") and found.tags == ("team-x",)
    assert await store.find(secret + "x") is None
    assert key.hash != hash_secret("", secret)  # the pepper is in the hash
    assert [k.id for k in await store.list_keys()] == [key.id]


async def test_redis_holds_only_hashes() -> None:
    if not redis_listening():
        pytest.skip("no Redis")
    prefix = f"test-keys-{uuid.uuid4().hex[:10]}:"
    store = RedisKeyStore(REDIS_URL, prefix=prefix)
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        key, secret = await store.create(KeySpec(name="hashed", budget_usd=1.0))
        await store.admit(key.id, "r1", 1, 1)
        dump: list[str] = []
        async for name in client.scan_iter(match=f"{prefix}*"):
            dump.append(name)
            kind = await client.type(name)
            if kind == "hash":
                dump.extend(f"{k!s}={v!s}" for k, v in (await client.hgetall(name)).items())
            elif kind == "string":
                dump.append(str(await client.get(name)))
            elif kind == "zset":
                dump.extend(str(member) for member in await client.zrange(name, 0, -1))
            elif kind == "set":
                dump.extend(str(member) for member in await client.smembers(name))
        text = "\n".join(dump)
        assert f"{prefix}key:{key.id}" in text and key.hash in text  # the dump is real
        assert secret not in text and secret.removeprefix("sk-slmgw-") not in text
        pepper = str(await client.get(f"{prefix}keys:pepper"))
        assert hash_secret(pepper, secret) == key.hash
    finally:
        await store.delete_all()
        await store.close()
        await client.aclose()


async def test_lapsed_reservation_is_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that dies mid-request never settles: its reservation lapses instead of leaking."""
    monkeypatch.setattr("gateway.auth.sqlite_keys.RESERVATION_TTL_S", 0.2)
    store = SQLiteKeyStore(tmp_path / "keys.sqlite3")
    try:
        key, _ = await store.create(KeySpec(name="lapse", budget_usd=RESERVATION / NANO_PER_USD))
        assert (await store.admit(key.id, "dead", RESERVATION, 1)).ok
        assert (await store.admit(key.id, "next", RESERVATION, 1)).outcome == BUDGET_BUSY
        await asyncio.sleep(0.3)
        assert (await store.admit(key.id, "next", RESERVATION, 1)).ok
    finally:
        await store.close()


def test_worst_case_estimate_covers_every_reachable_priced_backend() -> None:
    policy = Policy.model_validate({
        "backends": {
            "slm": {"type": "local", "model": "smollm2", "default_max_tokens": 256},
            "llm": {"type": "openai", "base_url": "http://x/v1", "model": "m", "context_length": 4096,
                    "price": {"input_per_1m": 2.0, "output_per_1m": 10.0}},
        },
        "models": {"slm": {"type": "static", "backend": "slm"}, "llm": {"type": "static", "backend": "llm"}},
    })
    assert reachable_backends(policy, "llm") == ["llm"]
    cost, tokens = worst_case(policy, "llm", 100, 50)
    assert cost == round((100 * 2.0 + 50 * 10.0) / 1e6 * NANO_PER_USD) and tokens == 150
    cost, tokens = worst_case(policy, "llm", 100, None)  # no max_tokens: the upstream's context length
    assert cost == round((100 * 2.0 + 4096 * 10.0) / 1e6 * NANO_PER_USD) and tokens == 100 + 4096
    assert worst_case(policy, "slm", 100, 50) == (0, 150)


def test_a_self_calibration_judge_is_never_in_the_clients_hold() -> None:
    """Judge and shadow calls are the gateway's spend (a shadow record): a priced judge backend must
    not inflate the reservation a client's key is asked for, though the policy check sees it."""
    policy = Policy.model_validate({
        "backends": {
            "slm": {"type": "local", "model": "smollm2"},
            "llm": {"type": "openai", "base_url": "http://x/v1", "model": "m", "price": {"output_per_1m": 10.0}},
            "judge": {"type": "openai", "base_url": "http://x/v1", "model": "j", "price": {"output_per_1m": 1000.0}},
        },
        "models": {"auto": {"type": "cascade", "tiers": [
            {"backend": "slm", "threshold": -1.0, "self_calibration": {
                "judge": {"type": "llm", "backend": "judge"}, "max_disagreement": 0.05}},
            {"backend": "llm"}]}},
    })
    assert "judge" in policy.models["auto"].referenced_backends()
    assert reachable_backends(policy, "auto") == ["slm", "llm"]
    assert worst_case(policy, "auto", 100, 50)[0] == round(50 * 10.0 / 1e6 * NANO_PER_USD)


def test_expiry_forms() -> None:
    now = 1_000_000.0
    assert parse_expiry("30d", now) == now + 30 * 86400
    assert parse_expiry("12h", now) == now + 12 * 3600
    end_of_day = parse_expiry("2026-12-31")
    assert end_of_day is not None and time.gmtime(end_of_day - 1).tm_mday == 31
    with pytest.raises(ValueError):
        parse_expiry("soon")


def test_retry_after_tokens_waits_for_enough_to_leave() -> None:
    events = [(0.0, 50), (10.0, 30), (20.0, 20)]
    assert retry_after_tokens(events, need=40, tpm=100, now=30.0) == pytest.approx(30.0)  # first must leave
    assert retry_after_tokens(events, need=90, tpm=100, now=30.0) == pytest.approx(50.0)  # two must leave
