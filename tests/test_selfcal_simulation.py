"""Issue 22's simulation: a scripted pair of upstreams whose agreement depends on a hidden
difficulty (tests/selfcal_support.World), the small model's logprob-based score correlated with
it, and many requests driven through the real Cascade strategy with in-memory runner and store.

Shown over seeded runs: the threshold converges towards the target's oracle threshold (the
loosest one whose kept answers disagree at the target rate), the realised disagreement of the
answers it keeps — measured on 200 000 fresh requests — is <= the target in >= 95 % of runs,
and a drift (the small model gets worse) raises the alarm and tightens the threshold.
The heavier version (more seeds, longer runs, sampling at 50 %) is marked slow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from gateway.core.selfcal import CalibrationState
from tests.selfcal_support import QuestionBook, World, ask, kept_threshold, selfcal_cascade

TARGET = 0.05
CONFIGURED = -0.3  # the policy's threshold: strict, keeps ~11 % of traffic
BASE = World(severity=0.3)
# Drifts: the small model gets worse on hard questions while its confidence does not change.
MILD = World(severity=1.2)  # the old oracle threshold now keeps ~4x the target's disagreement
SHARP = World(severity=3.0)  # ... ~10x: a broken template, a new kind of traffic


@dataclass(frozen=True)
class Settings:
    sample_rate: float
    window: int
    min_labels: int
    refit_every: int

    def selfcal(self) -> dict[str, Any]:
        return {"judge": {"type": "exact"}, "sample_rate": self.sample_rate, "max_disagreement": TARGET,
                "confidence": 0.95, "min_labels": self.min_labels, "window": self.window,
                "refit_every": self.refit_every, "max_concurrent": 256, "budget_usd_per_day": 1e6,
                "refresh_seconds": 3600.0}


FAST = Settings(sample_rate=1.0, window=1600, min_labels=800, refit_every=200)
LONG = Settings(sample_rate=0.5, window=4000, min_labels=1000, refit_every=250)


@dataclass
class Run:
    final: float  # the raw threshold deciding at the end
    states: list[CalibrationState]  # every state stored, in order
    labels_at: list[int]  # the label count when each was stored
    phase_ends: list[int]  # the label count at the end of each phase


async def run(seed: int, phases: list[tuple[World, int]], settings: Settings) -> Run:
    """Requests from each (world, count) phase in turn, through one strategy instance."""
    book, rng = QuestionBook(), np.random.default_rng(seed)
    strategy, store, runner = selfcal_cascade(book, settings.selfcal(), threshold=CONFIGURED)
    strategy.calibrators[0].random.seed(seed)
    await strategy.start()
    phase_ends = []
    for world, count in phases:
        for index, question in enumerate(book.add(world, rng, count)):
            await ask(strategy, question, f"r{index}")
            if index % 50 == 0:  # the scripted tiers never suspend: give the shadow jobs their turn
                await runner.drain()
        await runner.drain()
        phase_ends.append(store.counts.get(("cascade", 0), 0))
    assert runner.failures == [] and runner.refused == 0
    return Run(kept_threshold(strategy, CONFIGURED), list(store.history), list(store.stored_at), phase_ends)


async def convergence(seeds: int, requests: int, settings: Settings) -> dict[str, float]:
    fresh = BASE.fresh()
    oracle = fresh.oracle(TARGET)
    finals, first_shares, state_risks = [], [], []
    for seed in range(seeds):
        result = await run(seed, [(BASE, requests)], settings)
        finals.append((*fresh.risk(result.final), result.final))
        fitted = [s for s in result.states if s.labels_used >= settings.min_labels]
        first_shares.append(fresh.risk(fitted[0].threshold)[1])
        state_risks += [fresh.risk(s.threshold)[0] for s in fitted]
    risks, shares, thresholds = (np.array(column) for column in zip(*finals, strict=True))
    return {"valid": float((risks <= TARGET).mean()), "states_valid": float((np.array(state_risks) <= TARGET).mean()),
            "risk": float(risks.mean()), "share": float(shares.mean()), "oracle_share": fresh.risk(oracle)[1],
            "first_share": float(np.mean(first_shares)), "configured_share": fresh.risk(CONFIGURED)[1],
            "distance": float(np.median(np.abs(thresholds - oracle))), "start_distance": abs(CONFIGURED - oracle)}


def check_convergence(figures: dict[str, float], min_share_of_oracle: float) -> None:
    print(figures)  # the figures docs/cascade.md quotes (pytest -s)
    assert figures["valid"] >= 0.95 and figures["states_valid"] >= 0.95, figures
    assert figures["risk"] <= TARGET, figures
    # Towards the target: looser than configured, looser with more labels, close to the oracle.
    assert figures["share"] > figures["first_share"] > figures["configured_share"], figures
    assert figures["share"] >= min_share_of_oracle * figures["oracle_share"], figures
    assert figures["distance"] < figures["start_distance"] / 2, figures


async def test_threshold_converges_and_the_bound_holds_over_40_seeds() -> None:
    check_convergence(await convergence(seeds=40, requests=1600, settings=FAST), 0.6)


@pytest.mark.slow
async def test_threshold_converges_and_the_bound_holds_over_100_long_runs() -> None:
    check_convergence(await convergence(seeds=100, requests=8000, settings=LONG), 0.7)


@dataclass
class Drifted:
    before: float  # the threshold in force when the drift began
    tightened_after: int  # labels from the drift to the first state tighter than that
    alarm_after: int | None  # labels from the drift to the first drift alarm (None: none raised)
    final: float  # the threshold at the end of the run
    final_risk: float  # its realised kept disagreement in the drifted world


async def drift(world: World, seeds: int, before: int, after: int, settings: Settings) -> list[Drifted]:
    fresh = world.fresh()
    out = []
    for seed in range(seeds):
        result = await run(seed, [(BASE, before), (world, after)], settings)
        start = result.phase_ends[0]  # labels before the drift
        pairs = list(zip(result.states, result.labels_at, strict=True))
        assert all(state.reason != "drift" for state, count in pairs if count <= start), f"seed {seed}: false alarm"
        in_force = [state for state, count in pairs if count <= start][-1]
        tightened = next(count for state, count in pairs if count > start and state.threshold > in_force.threshold)
        alarm = next((count for state, count in pairs if count > start and state.reason == "drift"), None)
        out.append(Drifted(in_force.threshold, tightened - start, None if alarm is None else alarm - start,
                           result.final, fresh.risk(result.final)[0]))
    return out


def check_drift(runs: list[Drifted], within: int, alarm_within: int, alarm_share: float,
                final_valid: float = 0.95) -> None:
    """Every run tightened within ``within`` labels of the drift (by the alarm or a refit), a
    share ``alarm_share`` of them by the alarm within ``alarm_within`` labels, and the final
    threshold met the target in the drifted world in a share ``final_valid`` of runs."""
    print(runs)  # pytest -s
    for result in runs:
        assert result.tightened_after <= within and result.final > result.before, result
    alarms = [r.alarm_after is not None and r.alarm_after <= alarm_within for r in runs]
    assert np.mean(alarms) >= alarm_share, runs
    assert np.mean([r.final_risk <= TARGET for r in runs]) >= final_valid, runs


async def test_a_sharp_drift_raises_the_alarm_and_tightens_at_once() -> None:
    assert SHARP.fresh().risk(BASE.fresh().oracle(TARGET))[0] > 5 * TARGET  # the drift is real
    # The alarm needs kept answers to see the drift in: a strict threshold (few kept) may leave
    # it to the next refit (every 200 labels here).
    runs = await drift(SHARP, seeds=3, before=1600, after=1200, settings=FAST)
    check_drift(runs, within=250, alarm_within=150, alarm_share=0.6)


async def test_a_mild_drift_tightens_within_a_refit_or_two() -> None:
    assert MILD.fresh().risk(BASE.fresh().oracle(TARGET))[0] > 2 * TARGET
    runs = await drift(MILD, seeds=3, before=1600, after=1600, settings=FAST)
    check_drift(runs, within=450, alarm_within=450, alarm_share=0.0)


@pytest.mark.slow
async def test_a_sharp_drift_over_20_long_runs() -> None:
    runs = await drift(SHARP, seeds=20, before=6000, after=4000, settings=LONG)
    check_drift(runs, within=300, alarm_within=300, alarm_share=0.9)


@pytest.mark.slow
async def test_a_mild_drift_over_20_long_runs() -> None:
    """A mild drift is left to the refits, whose 4 000-label window mixes old and new traffic
    for a while: the guarantee's exchangeability does not hold then, and a threshold certified
    on the mixture can be too loose for the new traffic (docs/cascade.md: 2 of 20 runs)."""
    runs = await drift(MILD, seeds=20, before=6000, after=4000, settings=LONG)
    check_drift(runs, within=1500, alarm_within=1500, alarm_share=0.0, final_valid=0.85)
