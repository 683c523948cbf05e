"""Shadow jobs for real: the priced echo backend as the "large" tier, the real accounting store
(SQLite), and the real self-calibration store (SQLite file and Redis on 6379, per test prefix).

What is checked: a job starts off the caller's path and is recorded as shadow spend (never as a
request, never on a key, every call unused); the concurrency cap and the daily budget hold —
across replicas sharing the store too, and under concurrent load; a call whose worst case the
budget cannot cover is never made; failures and shutdown still leave a record.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.metrics import GatewayMetrics
from gateway.accounting.selfcal_redis import RedisSelfCalStore
from gateway.accounting.selfcal_sqlite import SQLiteSelfCalStore
from gateway.accounting.selfcal_store import SharedSelfCalStore, utc_day
from gateway.accounting.service import AccountingService, build_accounting
from gateway.auth.keys import nano_to_usd, usd_to_nano
from gateway.core.backend import ChatMessage, SamplingParams
from gateway.core.selfcal import ShadowJob
from gateway.core.strategy import RequestContext
from gateway.runtime import PolicyRuntime
from gateway.serving.selfcal_service import SelfCalService
from policies.loader import parse_policy
from tests.test_accounting_stores import REDIS_URL, redis_listening

# The "large" tier is priced steeply so that one echo call costs a visible fraction of a dollar.
POLICY: dict[str, Any] = {
    "version": 1,
    "gateway": {"reference_llm": "large"},
    "backends": {
        "small": {"type": "echo"},
        "large": {"type": "echo", "prefix": "large says", "price": {"input_per_1m": 2000.0, "output_per_1m": 4000.0}},
    },
    "models": {"cascade": {"type": "static", "backend": "small"}, "large": {"type": "static", "backend": "large"}},
}
MODEL = "cascade"


@dataclass
class Replica:
    service: SelfCalService
    runtime: PolicyRuntime
    metrics: GatewayMetrics

    def submit(self, job: ShadowJob, *, cap: int = 4, budget: float = 10.0, estimate: float = 0.01) -> bool:
        runner = self.runtime.strategies[MODEL].resources.shadow
        assert runner is not None
        return runner.submit(MODEL, job, max_concurrent=cap, budget_usd_per_day=budget, estimated_cost_usd=estimate)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"slm_gateway_{name}", labels) or 0.0


@dataclass
class Harness:
    accounting: AccountingService
    store_kind: str
    open_store: Any
    replicas: list[Replica]

    async def replica(self) -> Replica:
        metrics = GatewayMetrics()
        service = SelfCalService(self.open_store(), self.accounting, metrics)
        runtime = await PolicyRuntime.start(parse_policy(POLICY), wiring=service)
        self.replicas.append(Replica(service, runtime, metrics))
        return self.replicas[-1]

    async def records(self) -> list[dict[str, Any]]:
        assert all([await replica.service.jobs.wait_idle() for replica in self.replicas])
        assert await self.accounting.wait_idle()
        return [r for r in await self.accounting.store.recent_records(10_000) if r["endpoint"] == "shadow"]


@pytest.fixture(params=["sqlite", "redis"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "redis" and not redis_listening():
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"test-shadow-{uuid.uuid4().hex[:10]}:"

    def open_store() -> SharedSelfCalStore:
        if request.param == "redis":
            return RedisSelfCalStore(REDIS_URL, prefix=prefix)
        return SQLiteSelfCalStore(tmp_path / "selfcal.sqlite3")

    accounting = build_accounting(None, tmp_path / "accounting", journal=True)
    await accounting.start()
    harness = Harness(accounting, request.param, open_store, [])
    yield harness
    for replica in harness.replicas:
        await replica.service.close(grace_s=5.0)
        await replica.runtime.close()
    await accounting.close()
    if request.param == "redis":
        await RedisSelfCalStore(REDIS_URL, prefix=prefix).delete_all()


def calling_job(*, gate: asyncio.Event | None = None, started: list[str] | None = None, calls: int = 1,
                fail_after: bool = False, max_tokens: int = 16) -> ShadowJob:
    async def job(ctx: RequestContext) -> None:
        if started is not None:
            started.append(ctx.record.request_id)
        if gate is not None:
            await gate.wait()
        for index in range(calls):
            messages = [ChatMessage(role="user", content=f"what is {index} plus {index}?")]
            async for _event in ctx.call_chat("large", messages, SamplingParams(max_tokens=max_tokens)):
                pass
        if fail_after:
            raise ValueError("the judge choked")

    return job


async def ledger(replica: Replica) -> tuple[float, float]:
    day = await replica.service.store.shadow_day(MODEL, utc_day())
    return nano_to_usd(day.spent_nano), nano_to_usd(day.held_nano)


async def test_a_shadow_job_runs_off_the_callers_path_and_is_recorded_as_shadow_spend(harness: Harness) -> None:
    replica = await harness.replica()
    started: list[str] = []
    assert replica.submit(calling_job(started=started))
    assert started == []  # submit returned before the job ran a single step
    [record] = await harness.records()
    assert record["public_model"] == MODEL and record["route"] == "shadow" and record["key_id"] is None
    assert record["status"] == "ok" and record["request_id"] == started[0]
    assert [call["used"] for call in record["calls"]] == [False] and record["calls"][0]["backend"] == "large"
    cost = record["cost_usd"]
    assert cost > 0 and record["wasted_cost_usd"] == pytest.approx(cost) and record["completion_tokens"] == 0
    usage = await harness.accounting.usage("10m", None, "model")
    [group] = [g for g in usage["groups"] if g["key"] == MODEL]
    # Not a client request: requests and latency stay the clients'; the spend is shadow spend.
    assert group["requests"] == 0 and group["shadow_jobs"] == 1 and group["latency_ms"]["p50"] is None
    assert group["shadow_cost_usd"] == pytest.approx(cost) and group["cost_usd"] == pytest.approx(cost)
    assert group["savings_usd"] == pytest.approx(-cost)  # what self-calibration cost is counted against savings
    spent, held = await ledger(replica)
    assert spent == pytest.approx(cost, abs=1e-9) and held == 0.0  # the hold settled to the real cost
    assert replica.sample("shadow_jobs_started_total", model=MODEL) == 1
    assert replica.sample("upstream_calls_total", backend="large", status="ok", used="false") == 1
    assert replica.sample("shadow_cost_usd_total", route="shadow", model=MODEL) == pytest.approx(cost)
    assert replica.sample("requests_total", route="shadow", model=MODEL, status="ok") == 0


async def test_the_concurrency_cap_refuses_before_anything_starts(harness: Harness) -> None:
    replica = await harness.replica()
    gate, started = asyncio.Event(), list[str]()
    results = [replica.submit(calling_job(gate=gate, started=started), cap=2) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert results == [True, True, False] and len(started) == 2 and replica.service.jobs.running(MODEL) == 2
    assert replica.sample("shadow_jobs_skipped_total", model=MODEL, reason="cap") == 1
    gate.set()
    assert len(await harness.records()) == 2
    assert replica.submit(calling_job(), cap=2)  # the slots are free again
    assert len(await harness.records()) == 3


async def test_the_daily_budget_is_shared_by_replicas(harness: Harness) -> None:
    first, second = await harness.replica(), await harness.replica()
    gate, started = asyncio.Event(), list[str]()
    job = calling_job(gate=gate, started=started)
    # Each job holds 0.3 of a 1.0 budget: three fit, and a fourth is refused by the first replica
    # itself; the second replica knows nothing of them, but the store's hold refuses its job.
    assert [first.submit(job, budget=1.0, estimate=0.3) for _ in range(4)] == [True, True, True, False]
    await asyncio.sleep(0.2)
    assert second.submit(job, budget=1.0, estimate=0.3)  # accepted locally ...
    assert await second.service.jobs.wait_idle()
    assert len(started) == 3  # ... but it never ran
    assert second.sample("shadow_jobs_skipped_total", model=MODEL, reason="budget") == 1
    assert not second.submit(job, budget=1.0, estimate=0.3)  # the refusal is remembered: no store trip
    gate.set()
    records = await harness.records()
    spent, held = await ledger(first)
    assert len(records) == 3 and held == 0.0
    assert spent == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-8) and spent <= 1.0


async def test_a_call_the_budget_cannot_cover_is_never_made(harness: Harness) -> None:
    replica = await harness.replica()
    # Nothing held up front; each call's worst case (0.098 $: a 16-token answer at 4000 $/M plus
    # the prompt estimate) is covered before it starts. The first call's hold is 0.098 $; it
    # costs ~0.03 $, so the second needs the hold grown to ~0.125 $: past a 0.11 $ budget.
    assert replica.submit(calling_job(calls=3), budget=0.11, estimate=0.0)
    [record] = await harness.records()
    assert record["status"] == "shadow_budget" and record["http_status"] == 429
    assert len(record["calls"]) == 1  # the second call was refused before it was sent
    spent, held = await ledger(replica)
    assert spent == pytest.approx(record["cost_usd"], abs=1e-8) and spent <= 0.11 and held == 0.0


async def test_a_failing_job_is_logged_and_recorded(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    replica = await harness.replica()
    with caplog.at_level(logging.WARNING, logger="gateway.serving.shadow"):
        assert replica.submit(calling_job(fail_after=True))
        [record] = await harness.records()
    assert record["status"] != "ok" and record["http_status"] == 500 and len(record["calls"]) == 1
    assert record["cost_usd"] > 0  # the call it made is real spend
    assert "the judge choked" in caplog.text
    assert replica.sample("shadow_job_failures_total", model=MODEL) == 1


async def test_shutdown_cancels_running_jobs_and_still_writes_their_records(harness: Harness) -> None:
    replica = await harness.replica()
    never = asyncio.Event()

    async def job(ctx: RequestContext) -> None:
        await calling_job()(ctx)  # one real call, then it waits for ever
        await never.wait()

    assert replica.submit(job)
    await asyncio.sleep(0.2)
    await replica.service.jobs.close(grace_s=0.2)
    [record] = await harness.records()
    assert record["status"] == "cancelled" and len(record["calls"]) == 1
    spent, held = await ledger(replica)
    assert spent == pytest.approx(record["cost_usd"], abs=1e-8) and held == 0.0
    assert not replica.submit(calling_job())  # closed: nothing new starts
    assert replica.sample("shadow_jobs_skipped_total", model=MODEL, reason="closed") == 1


async def test_under_concurrent_load_the_cap_and_the_budget_hold(harness: Harness) -> None:
    replicas = [await harness.replica(), await harness.replica()]
    rng = random.Random(22)
    cap, budget, estimate = 3, 0.6, 0.04
    in_flight = {id(r): 0 for r in replicas}
    peaks = {id(r): 0 for r in replicas}

    def job_for(replica: Replica) -> ShadowJob:
        async def job(ctx: RequestContext) -> None:
            in_flight[id(replica)] += 1
            peaks[id(replica)] = max(peaks[id(replica)], in_flight[id(replica)])
            try:
                await asyncio.sleep(rng.uniform(0.0, 0.02))
                await calling_job(max_tokens=8)(ctx)
            finally:
                in_flight[id(replica)] -= 1
        return job

    async def client(index: int) -> list[bool]:
        accepted = []
        for _ in range(25):
            replica = replicas[index % 2]
            accepted.append(replica.submit(job_for(replica), cap=cap, budget=budget, estimate=estimate))
            await asyncio.sleep(rng.uniform(0.0, 0.005))
        return accepted

    accepted = [ok for results in await asyncio.gather(*(client(i) for i in range(8))) for ok in results]
    records = await harness.records()
    spent, held = await ledger(replicas[0])
    started = sum(r.sample("shadow_jobs_started_total", model=MODEL) for r in replicas)
    assert max(peaks.values()) <= cap and all(r.service.jobs.peak[MODEL] <= cap for r in replicas)
    assert spent <= budget and held == 0.0
    assert len(records) == started and 0 < started <= sum(accepted) < len(accepted)  # some ran, some refused
    assert spent == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-8)
    assert all(call["used"] is False for r in records for call in r["calls"])
    assert usd_to_nano(spent) > 0


class StallingHolds:
    """The real store, except that a hold, once granted, never returns (a fault: the ledger hangs)."""

    def __init__(self, store: SharedSelfCalStore) -> None:
        self.store = store
        self.granted = asyncio.Event()

    async def hold(self, model: str, day: str, hold_id: str, nano: int, budget_nano: int) -> bool:
        await self.store.hold(model, day, hold_id, nano, budget_nano)
        self.granted.set()
        await asyncio.Event().wait()
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_job_cancelled_while_holding_releases_its_hold(harness: Harness) -> None:
    replica = await harness.replica()
    stalling = StallingHolds(replica.service.store)
    replica.service.jobs._store = stalling  # the fault, injected
    started: list[str] = []
    assert replica.submit(calling_job(started=started), estimate=0.3)
    await asyncio.wait_for(stalling.granted.wait(), 10)
    assert (await ledger(replica))[1] == pytest.approx(0.3)
    await replica.service.jobs.close(grace_s=0.1)
    assert await ledger(replica) == (0.0, 0.0) and started == []  # released, and the job never ran
    assert await harness.records() == []
