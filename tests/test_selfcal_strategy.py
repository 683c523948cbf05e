"""Self-calibration inside the real Cascade strategy (issue 22), on the scripted pair of
tests/selfcal_support.py: what is labelled and how (shadow jobs for kept answers, free pairs for
escalated ones, one sampling rate), what the client's record says, that the client never waits
on the shadow path, the shared threshold across replicas, and handoff's monitor-only labels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.selfcal import CalibrationState
from tests.selfcal_support import QuestionBook, ScriptedTier, ask, selfcal_cascade

ALWAYS: dict[str, Any] = {"judge": {"type": "exact"}, "sample_rate": 1.0, "min_labels": 10, "window": 100,
                          "max_concurrent": 64}


def shared_state(threshold: float, version: int = 1) -> CalibrationState:
    return CalibrationState("cascade", 0, version, threshold, 2000, 0.045, 0.03, 0.95, 0.5, "loosened", 1.0)


async def test_a_kept_answer_is_shadowed_off_the_clients_path() -> None:
    book = QuestionBook()
    strategy, store, runner = selfcal_cascade(book, ALWAYS, threshold=-1.0)
    large = strategy.resources.backend("large")
    large.gate = asyncio.Event()  # type: ignore[attr-defined]  # the shadowed tier hangs until released
    await strategy.start()
    text, record = await asyncio.wait_for(ask(strategy, book.put(-0.2, agree=False)), timeout=5)
    assert text == "B" and record.escalated is False  # the client has the small answer already
    assert [c.backend for c in record.calls] == ["small"]
    assert record.extra["shadow"] == [{"tier": 0, "kind": "shadow", "scheduled": True}]
    assert runner.running == 1 and store.counts == {}
    large.gate.set()  # type: ignore[attr-defined]
    await runner.drain()
    (label,) = store.label_lists[("cascade", 0)]
    assert (label.kept, label.agree, label.score, label.small_text, label.large_text) == (True, False, -0.2, "B", "A")
    assert label.request_id == record.request_id
    (shadow,) = runner.records
    assert [(c.backend, c.used, c.purpose) for c in shadow.calls] == [("large", False, "shadow")]
    assert shadow.calls[0].cost_usd > 0 and runner.spent_usd == pytest.approx(shadow.calls[0].cost_usd)
    assert shadow.extra["selfcal"]["agree"] is False and shadow.extra["selfcal"]["labels"] == 1
    assert runner.failures == []


async def test_an_escalated_pair_is_labelled_without_another_call_at_the_same_estimate() -> None:
    book = QuestionBook()
    strategy, store, runner = selfcal_cascade(book, ALWAYS, threshold=-1.0)
    await strategy.start()
    await ask(strategy, book.put(-0.5, agree=True))
    text, escalated = await ask(strategy, book.put(-2.0, agree=True))
    await runner.drain()
    assert text == "A" and escalated.escalated is True
    assert escalated.extra["shadow"] == [{"tier": 0, "kind": "pair", "scheduled": True}]
    assert strategy.resources.backend("large").calls == 2  # type: ignore[attr-defined]  # one shadow, one answer
    labels = store.label_lists[("cascade", 0)]
    assert [(lab.kept, lab.score) for lab in labels] == [(True, -0.5), (False, -2.0)]
    assert runner.records[1].calls == []  # the pair cost nothing more
    # Both kinds are admitted under one rule: the estimate of the next tier's answer.
    assert runner.estimates[0] == pytest.approx(runner.estimates[1]) and runner.estimates[0] > 0


async def test_both_kinds_are_labelled_at_the_one_sample_rate() -> None:
    book = QuestionBook()
    no_refits = {"refit_every": 10**6, "drift": {"check_every": 10**6}}
    strategy, store, runner = selfcal_cascade(book, {**ALWAYS, "sample_rate": 0.3, **no_refits}, threshold=-1.0)
    strategy.calibrators[0].random.seed(7)
    await strategy.start()
    for index in range(2000):
        await ask(strategy, book.put(-0.5 if index % 2 else -2.0, agree=True))
        if index % 20 == 0:  # the scripted tiers never suspend: jobs run when the loop gets a turn
            await runner.drain()
    await runner.drain()
    assert runner.refused == 0
    labels = store.label_lists[("cascade", 0)]
    kept = sum(label.kept for label in labels)
    # 1000 of each kind, each labelled with probability 0.3: 300 +- 14.5 (sd); 4.5 sd bounds.
    assert abs(kept - 300) < 65 and abs(len(labels) - kept - 300) < 65


async def test_without_the_service_parts_the_cascade_runs_as_configured() -> None:
    book = QuestionBook()
    strategy, store, runner = selfcal_cascade(book, ALWAYS, threshold=-1.0)
    store.states[("cascade", 0)] = shared_state(-5.0)
    strategy.resources.shadow = None
    await strategy.start()
    text, record = await ask(strategy, book.put(-2.0, agree=False))
    assert text == "A" and record.escalated is True  # the configured -1.0 decided, not the store's -5
    assert record.extra["shadow"] == [{"tier": 0, "kind": "pair", "scheduled": False, "reason": "unavailable"}]
    strategy.resources.selfcal_store = None
    _, record = await ask(strategy, book.put(-0.5, agree=True))
    assert record.extra["shadow"][0]["reason"] == "unavailable" and "selfcal" not in record.extra
    assert runner.records == []


async def test_a_full_runner_refuses_and_the_record_says_so() -> None:
    book = QuestionBook()
    strategy, _, runner = selfcal_cascade(book, {**ALWAYS, "max_concurrent": 1}, threshold=-1.0)
    large = strategy.resources.backend("large")
    large.gate = asyncio.Event()  # type: ignore[attr-defined]
    await strategy.start()
    _, first = await ask(strategy, book.put(-0.5, agree=True))
    _, second = await ask(strategy, book.put(-0.5, agree=True))
    assert first.extra["shadow"][0]["scheduled"] is True
    assert second.extra["shadow"][0] == {"tier": 0, "kind": "shadow", "scheduled": False, "reason": "refused"}
    assert runner.peak == 1 and runner.refused == 1
    large.gate.set()  # type: ignore[attr-defined]
    await runner.drain()


async def test_answers_the_threshold_does_not_decide_are_not_labelled() -> None:
    book = QuestionBook()
    strategy, store, runner = selfcal_cascade(book, ALWAYS, threshold=-1.0,
                                              early_exit={"window": 1, "floor": -3.0})
    await strategy.start()
    _, record = await ask(strategy, book.put(-4.0, agree=True))  # cut by the running check
    await runner.drain()
    assert record.escalated is True and record.extra["early_exit"][0]["at_token"] == 1
    assert "shadow" not in record.extra and store.counts == {}


async def test_the_shared_threshold_decides_on_every_replica() -> None:
    book = QuestionBook()
    config = {**ALWAYS, "sample_rate": 0.01, "refresh_seconds": 0.0}
    replica_a, store, _ = selfcal_cascade(book, config, threshold=-1.0)
    replica_b, _, _ = selfcal_cascade(book, config, threshold=-1.0, store=store)
    store.states[("cascade", 0)] = shared_state(-3.0)
    await replica_a.start()  # reads the state at start
    await replica_b.start()
    question = book.put(-2.0, agree=True)
    for replica in (replica_a, replica_b):
        _, record = await ask(replica, question)
        assert record.escalated is False  # -2.0 >= -3.0: kept, where the configured -1.0 escalates
        assert record.extra["selfcal"] == [{"tier": 0, "raw_score": -2.0, "threshold": -3.0, "version": 1}]
    store.states[("cascade", 0)] = shared_state(-1.5, version=2)  # another replica refitted
    await ask(replica_b, question)  # still the copy at hand: the request never waits on the store
    await asyncio.sleep(0.01)  # the background re-read lands
    _, record = await ask(replica_b, question)
    assert record.escalated is True and record.extra["selfcal"][0]["version"] == 2


async def test_monitor_only_ignores_the_shared_threshold() -> None:
    book = QuestionBook()
    strategy, store, _ = selfcal_cascade(book, {**ALWAYS, "apply": False}, threshold=-1.0)
    store.states[("cascade", 0)] = shared_state(-3.0)
    await strategy.start()
    _, record = await ask(strategy, book.put(-2.0, agree=True))
    assert record.escalated is True and "selfcal" not in record.extra


async def test_refits_every_n_labels_and_applies_the_new_threshold_at_once() -> None:
    book = QuestionBook()
    config = {"judge": {"type": "exact"}, "sample_rate": 1.0, "min_labels": 300, "window": 400,
              "refit_every": 400, "refresh_seconds": 3600.0}
    strategy, store, runner = selfcal_cascade(book, config, threshold=-0.1)
    await strategy.start()
    rng = np.random.default_rng(0)
    for _ in range(400):  # confident answers agree, unsure ones often do not
        logprob = float(rng.uniform(-3, 0))
        await ask(strategy, book.put(logprob, agree=bool(logprob > -1.5 or rng.uniform() < 0.5)))
        await runner.drain()
    (state,) = store.history
    assert state.version == 1 and state.reason == "loosened" and state.labels_used == 400
    assert -2.0 < state.threshold < -0.1 and state.disagreement_bound <= 0.05
    assert strategy.calibrators[0].state == state  # this replica uses it now, no store read needed
    _, record = await ask(strategy, book.put(state.threshold + 0.01, agree=True))
    assert record.escalated is False and record.extra["selfcal"][0]["version"] == 1
    assert runner.records[399].extra["selfcal"]["state"] == {"version": 1, "threshold": state.threshold,
                                                             "reason": "loosened"}  # the 400th label's job


async def test_handoff_labels_kept_answers_only() -> None:
    book = QuestionBook()
    strategy, store, runner = selfcal_cascade(book, {**ALWAYS, "apply": False}, threshold=-1.0, mode="handoff",
                                              early_exit={"window": 1, "floor": -3.0})
    await strategy.start()
    _, kept = await ask(strategy, book.put(-0.5, agree=False))
    text, handed = await ask(strategy, book.put(-4.0, agree=True))
    await runner.drain()
    assert kept.escalated is False and kept.extra["shadow"][0]["scheduled"] is True
    assert handed.extra["handoffs"] and text == "A"
    assert handed.extra["shadow"] == [{"tier": 0, "kind": "pair", "scheduled": False,
                                       "reason": "handoff: no whole small answer"}]
    (label,) = store.label_lists[("cascade", 0)]
    assert label.kept and not label.agree and label.small_text == "B"


class GatedJudge(Backend):
    """An llm judge backend that replies SAME once released."""

    def __init__(self) -> None:
        super().__init__("grader")
        self.gate = asyncio.Event()

    @property
    def model_name(self) -> str:
        return "gated-judge"

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        await self.gate.wait()
        yield TokenChunk(text="SAME", token_ids=(1,))
        yield GenerationDone(finish_reason="stop", prompt_tokens=50, completion_tokens=1, model=self.model_name)

    def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError


async def test_a_judge_call_never_delays_an_escalated_answer() -> None:
    book, grader = QuestionBook(), GatedJudge()
    config = {**ALWAYS, "judge": {"type": "llm", "backend": "grader"}}
    strategy, store, runner = selfcal_cascade(book, config, threshold=-1.0, judges={"grader": grader})
    await strategy.start()
    text, record = await asyncio.wait_for(ask(strategy, book.put(-2.0, agree=False)), timeout=5)
    assert text == "A" and record.extra["shadow"][0]["scheduled"] is True and runner.running == 1
    assert [c.backend for c in record.calls] == ["small", "large"]  # the judge is not the client's
    grader.gate.set()
    await runner.drain()
    (label,) = store.label_lists[("cascade", 0)]
    assert label.agree and label.judge == "llm" and label.detail == {"reply": "SAME"}
    assert [(c.backend, c.used, c.purpose) for c in runner.records[0].calls] == [("grader", False, "judge")]


class Unready(ScriptedTier):
    @property
    def ready(self) -> bool:
        return False


def test_a_judge_backend_does_not_gate_readiness() -> None:
    """The judge is off the client's path: a cascade whose grader is down still serves."""
    book = QuestionBook()
    grader = Unready("grader", book, small=False)
    strategy, _, _ = selfcal_cascade(book, {"judge": {"type": "llm", "backend": "grader"}}, judges={"grader": grader})
    assert strategy.config.referenced_backends() == ["small", "large", "grader"]
    assert strategy.ready()
