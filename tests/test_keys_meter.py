"""The per-call budget hold (gateway/auth/meter.py) and the store steps under it, on both stores:
extension of a reservation, refusal before the call, idempotent settlement (journal replays).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.auth.keys import NANO_PER_USD, KeySpec
from gateway.auth.limits import BUDGET, BUDGET_BUSY, OK
from gateway.auth.meter import BudgetMeter
from gateway.auth.store import KeyStore
from gateway.core.backend import ChatMessage, CompletionPrompt
from gateway.core.errors import RateLimitError
from policies.schema import Policy
from tests.test_keys_support import open_key_store

CALL = 10_000_000  # nano-dollars: one call to "paid" with max_tokens=10 at $1000 / 1M output tokens
POLICY = Policy.model_validate({
    "version": 1,
    "backends": {"paid": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                          "price": {"input_per_1m": 0.0, "output_per_1m": 1000.0}},
                 "free": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    "models": {"paid": {"type": "static", "backend": "paid"}},
})
PROMPT = [ChatMessage(role="user", content="hi")]


@pytest.fixture(params=["redis", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_key_store(request.param, tmp_path, "test-meter") as key_store:
        yield key_store


async def test_extension_is_atomic_against_the_budget(store: KeyStore) -> None:
    key, _ = await store.create(KeySpec(name="extend", budget_usd=3 * CALL / NANO_PER_USD))
    for i in range(10):
        assert (await store.admit(key.id, f"r{i}", 0, 10)).ok  # a free primary reserves nothing
    results = await asyncio.gather(*(store.extend(key.id, f"r{i}", CALL) for i in range(10)))
    assert sum(r.ok for r in results) == 3
    assert {r.outcome for r in results if not r.ok} == {BUDGET_BUSY}
    stored = await store.get(key.id)
    assert stored is not None and stored.reserved_nano == 3 * CALL
    extended = [f"r{i}" for i, r in enumerate(results) if r.ok]
    for reservation in extended:
        await store.settle(key.id, reservation, CALL, 10)
        await store.settle(key.id, reservation, CALL, 10)  # a replay: counted once
    stored = await store.get(key.id)
    assert stored is not None and stored.spent_nano == 3 * CALL and stored.reserved_nano == 0
    assert (await store.extend(key.id, "r9", CALL)).outcome == BUDGET  # it can never fit now


async def test_the_meter_holds_every_priced_call_and_refuses_before_calling(store: KeyStore) -> None:
    key, _ = await store.create(KeySpec(name="meter", budget_usd=2 * CALL / NANO_PER_USD))
    assert (await store.admit(key.id, "req", CALL, 10)).outcome == OK  # the admission covered one call
    meter = BudgetMeter(store, key, "req", CALL, POLICY)
    assert await meter.hold("free", PROMPT, 10) == 0  # free: no store step
    first = await meter.hold("paid", PROMPT, 10)
    assert first == CALL and meter.extensions == 0  # within the admission's reservation
    meter.release(first, 0.004)  # it cost less than its worst case
    second = await meter.hold("paid", CompletionPrompt(token_ids=[1, 2, 3]), 10)  # a fallback / hand-off
    assert meter.extensions == 1 and meter.reserved_nano == 14_000_000  # 4 spent + 10 held: extended by 4
    with pytest.raises(RateLimitError) as refused:
        await meter.hold("paid", PROMPT, 10)  # 0.4 + 1 + 1 > 2 calls' budget: refused, never called
    assert refused.value.code == "insufficient_quota"
    meter.release(second, 0.01)
    await store.settle(key.id, "req", 14_000_000, 20)
    stored = await store.get(key.id)
    assert stored is not None and stored.spent_nano == 14_000_000 and stored.reserved_nano == 0
