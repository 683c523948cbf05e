"""The self-calibration store, both for real: the embedded SQLite file and Redis on 6379.

Labels (capped, counted), calibration states (compare-and-set on the version, with replicas
racing for it), drift alarms, and the shadow budget ledger (holds never exceed the budget, even
when many holders race; settle replaces a hold with the real cost; a dead holder's hold lapses).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.accounting.selfcal_redis import RedisSelfCalStore
from gateway.accounting.selfcal_sqlite import SQLiteSelfCalStore
from gateway.accounting.selfcal_store import ShadowDay, SharedSelfCalStore
from gateway.core.selfcal import CalibrationState, Label
from tests.test_accounting_stores import REDIS_URL, redis_listening

StoreFactory = Callable[..., SharedSelfCalStore]


@pytest.fixture(params=["sqlite", "redis"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens store instances over one shared store: each is a replica (its own connection)."""
    opened: list[SharedSelfCalStore] = []
    prefix = f"test-selfcal-{uuid.uuid4().hex[:10]}:"
    if request.param == "redis" and not redis_listening():
        pytest.skip("no Redis on 127.0.0.1:6379")

    def open_store(**options: float) -> SharedSelfCalStore:
        store: SharedSelfCalStore
        if request.param == "redis":
            store = RedisSelfCalStore(REDIS_URL, prefix=prefix, **options)  # type: ignore[arg-type]
        else:
            store = SQLiteSelfCalStore(tmp_path / "selfcal.sqlite3", **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_store
    if request.param == "redis":
        await RedisSelfCalStore(REDIS_URL, prefix=prefix).delete_all()
    for store in opened:
        await store.close()


def label(index: int, *, model: str = "cascade", tier: int = 0, agree: bool = True) -> Label:
    return Label(model=model, tier=tier, score=index / 100, kept=index % 2 == 0, agree=agree, judge="normalized",
                 small_text=f"small {index}", large_text=f"large {index}", request_id=f"req-{index}",
                 created_at=time.time(), detail={"extracted": [str(index), str(index)]})


def state(version: int, *, model: str = "cascade", tier: int = 0, reason: str = "loosened",
          threshold: float = -0.5) -> CalibrationState:
    return CalibrationState(model=model, tier=tier, version=version, threshold=threshold, labels_used=200 + version,
                            disagreement_bound=0.049, disagreement_estimate=0.02, confidence=0.95, kept_share=0.6,
                            reason=reason, updated_at=time.time(), calibration_x=(-2.0, -1.0, 0.0),
                            calibration_y=(0.1, 0.5, 0.9))


async def test_labels_are_capped_oldest_first_and_counted_past_the_cap(replicas: StoreFactory) -> None:
    store = replicas(max_labels=5)
    counts = [await store.add_label(label(i)) for i in range(8)]
    assert counts == [1, 2, 3, 4, 5, 6, 7, 8]  # the count keeps growing: "refit every N" works on a full store
    newest = await store.labels("cascade", 0, 100)
    assert [item.request_id for item in newest] == [f"req-{i}" for i in range(3, 8)]
    assert newest[0].detail == {"extracted": ["3", "3"]} and newest[0].kept is False
    assert [item.request_id for item in await store.labels("cascade", 0, 2)] == ["req-6", "req-7"]
    assert await store.labels("cascade", 1, 10) == [] and await store.labels("cascade", 0, 0) == []
    assert await store.label_count("cascade", 0) == 8 and await store.label_count("other", 0) == 0


async def test_state_version_compare_and_set(replicas: StoreFactory) -> None:
    store = replicas()
    assert await store.get_state("cascade", 0) is None
    assert not await store.put_state(state(2))  # nothing stored: only version 1 is next
    assert await store.put_state(state(1, reason="initial"))
    assert not await store.put_state(state(1))  # stale
    assert not await store.put_state(state(3))  # skips one
    second = state(2, threshold=-0.25)
    assert await store.put_state(second)
    assert await store.get_state("cascade", 0) == second  # every field back, the map as tuples
    await store.add_label(label(1, model="b-model", tier=1))
    assert await store.cascades() == [("b-model", 1), ("cascade", 0)]


async def test_two_replicas_racing_put_state_never_both_win(replicas: StoreFactory) -> None:
    first, second = replicas(), replicas()
    winners: list[int] = []
    for version in range(1, 41):
        results = await asyncio.gather(first.put_state(state(version, threshold=0.1)),
                                       second.put_state(state(version, threshold=0.2)))
        assert sorted(results) == [False, True]  # exactly one replica stores each version
        winners.append(results.index(True))
    stored = await second.get_state("cascade", 0)
    assert stored is not None and stored.version == 40
    assert stored.threshold == (0.1 if winners[-1] == 0 else 0.2)  # the winner's state, whole


async def test_drift_alarms_count_stored_drift_states_only(replicas: StoreFactory) -> None:
    store = replicas()
    assert await store.put_state(state(1, reason="initial"))
    assert await store.put_state(state(2, reason="drift"))
    assert not await store.put_state(state(2, reason="drift"))  # refused: no alarm
    assert await store.put_state(state(3, reason="tightened"))
    assert await store.put_state(state(4, reason="drift"))
    assert await store.drift_alarms("cascade", 0) == 2


async def test_ledger_hold_settle_and_refusal(replicas: StoreFactory) -> None:
    store = replicas()
    day = "2026-12-01"
    assert await store.hold("cascade", day, "job-1", 600, budget_nano=1000)
    assert not await store.hold("cascade", day, "job-2", 500, budget_nano=1000)  # 600 + 500 > 1000
    assert await store.hold("cascade", day, "job-2", 400, budget_nano=1000)
    assert (await store.shadow_day("cascade", day)).held_nano == 1000
    await store.settle("cascade", day, "job-1", 100)  # the real cost replaces the hold
    current = await store.shadow_day("cascade", day)
    assert (current.spent_nano, current.held_nano) == (100, 400)
    assert await store.hold("cascade", day, "job-2", 300, budget_nano=1000)  # a job's hold grows: 700 held
    assert not await store.hold("cascade", day, "job-3", 201, budget_nano=1000)
    await store.settle("cascade", day, "job-2", 650)
    assert await store.shadow_day("cascade", day) == ShadowDay(750, 0)
    assert (await store.shadow_day("other", day)).spent_nano == 0
    assert (await store.shadow_day("cascade", "2026-12-02")).spent_nano == 0  # a new day, a new budget


async def test_a_dead_holders_hold_lapses(replicas: StoreFactory) -> None:
    store = replicas(hold_ttl_s=0.3)
    assert await store.hold("cascade", "d", "crashed-job", 900, budget_nano=1000)
    assert not await store.hold("cascade", "d", "next", 900, budget_nano=1000)
    await asyncio.sleep(0.5)
    assert await store.hold("cascade", "d", "next", 900, budget_nano=1000)
    assert (await store.shadow_day("cascade", "d")).held_nano == 900


async def test_racing_holders_on_many_replicas_never_exceed_the_budget(replicas: StoreFactory) -> None:
    stores = [replicas() for _ in range(4)]

    async def hold(index: int) -> bool:
        return await stores[index % 4].hold("cascade", "d", f"job-{index}", 7, budget_nano=100)

    granted = await asyncio.gather(*(hold(i) for i in range(60)))
    assert sum(granted) == 100 // 7  # every hold that fits, and not one more
    jobs: list[Awaitable[None]] = [stores[i % 4].settle("cascade", "d", f"job-{i}", 5)
                                   for i, ok in enumerate(granted) if ok]
    await asyncio.gather(*jobs)
    assert await stores[0].shadow_day("cascade", "d") == ShadowDay(14 * 5, 0)
