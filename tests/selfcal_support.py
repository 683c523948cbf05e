"""Test doubles for self-calibration's logic (issue 22): an in-memory ShadowRunner and
SelfCalibrationStore with the contract of gateway/core/selfcal.py, and a scripted pair of
upstreams whose agreement depends on a hidden difficulty.

The service's real runner and stores (Redis, SQLite) are exercised end to end in
tests/test_selfcal_http.py; these doubles let the simulation drive thousands of requests
through the real Cascade strategy in seconds, deterministically per seed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
)
from gateway.core.config import Price
from gateway.core.record import RequestRecord
from gateway.core.selfcal import CalibrationState, Label, ShadowJob
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext
from routers.cascade.config import CascadeStrategy
from routers.cascade.strategy import Cascade


class MemoryStore:
    """SelfCalibrationStore in memory: labels per (model, tier), compare-and-set states."""

    def __init__(self) -> None:
        self.label_lists: dict[tuple[str, int], list[Label]] = {}
        self.counts: dict[tuple[str, int], int] = {}
        self.states: dict[tuple[str, int], CalibrationState] = {}
        self.history: list[CalibrationState] = []  # every state stored, in order
        self.stored_at: list[int] = []  # the tier's label count when each of them was stored
        self.lost_races = 0

    async def add_label(self, label: Label) -> int:
        key = (label.model, label.tier)
        self.label_lists.setdefault(key, []).append(label)
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    async def labels(self, model: str, tier: int, limit: int) -> Sequence[Label]:
        return list(self.label_lists.get((model, tier), [])[-limit:])

    async def get_state(self, model: str, tier: int) -> CalibrationState | None:
        return self.states.get((model, tier))

    async def put_state(self, state: CalibrationState) -> bool:
        key = (state.model, state.tier)
        stored = self.states.get(key)
        if state.version != (stored.version + 1 if stored else 1):
            self.lost_races += 1
            return False
        self.states[key] = state
        self.history.append(state)
        self.stored_at.append(self.counts.get(key, 0))
        return True


class TaskRunner:
    """ShadowRunner: each job an asyncio task with a fresh shadow record; cap and budget enforced."""

    def __init__(self) -> None:
        self.resources: GatewayResources | None = None
        self.records: list[RequestRecord] = []
        self.failures: list[BaseException] = []
        self.refused = 0
        self.estimates: list[float] = []  # every submission's estimated cost, admitted or not
        self.running = 0
        self.peak = 0
        self.spent_usd = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, model: str, job: ShadowJob, *, max_concurrent: int, budget_usd_per_day: float,
               estimated_cost_usd: float) -> bool:
        self.estimates.append(estimated_cost_usd)
        if self.running >= max_concurrent or self.spent_usd + estimated_cost_usd > budget_usd_per_day:
            self.refused += 1
            return False
        assert self.resources is not None
        record = RequestRecord(request_id=f"shadow-{len(self.records)}", public_model=model, endpoint="shadow",
                               stream=False, route="shadow")
        self.records.append(record)
        self.running += 1
        self.peak = max(self.peak, self.running)
        task = asyncio.get_running_loop().create_task(self._run(job, RequestContext(record, self.resources)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, job: ShadowJob, ctx: RequestContext) -> None:
        try:
            await job(ctx)
        except Exception as exc:
            self.failures.append(exc)
        finally:
            self.running -= 1
            self.spent_usd += sum(call.cost_usd for call in ctx.record.calls)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


# --- a scripted pair of upstreams -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Question:
    difficulty: float  # hidden: neither the gateway nor the recalibrator sees it
    logprob: float  # the small model's answer token logprob: its confidence, correlated with ease
    agree: bool  # whether the small model's answer matches the large one's


@dataclass(frozen=True, slots=True)
class World:
    """P(disagree | difficulty d) = severity * d ** 1.5 with d ~ U(0, 1); the small model's answer
    logprob is -3 d plus Gaussian noise (sd ``noise``): confident answers are the easy ones."""

    severity: float = 0.3
    noise: float = 0.3

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = rng.uniform(0.0, 1.0, n)
        logprob = np.minimum(-3.0 * d + rng.normal(0.0, self.noise, n), 0.0)
        disagree = rng.uniform(0.0, 1.0, n) < self.severity * d ** 1.5
        return d, logprob, disagree

    def fresh(self, samples: int = 200_000, seed: int = 12345) -> FreshTraffic:
        """``samples`` fresh requests of this world, to measure what a threshold really keeps."""
        _, logprob, disagree = self.draw(np.random.default_rng(seed), samples)
        return FreshTraffic(logprob, disagree)


class FreshTraffic:
    """Requests no calibration saw: the realised disagreement of what a threshold keeps."""

    def __init__(self, logprob: np.ndarray, disagree: np.ndarray) -> None:
        order = np.argsort(-logprob, kind="stable")
        self.descending = logprob[order]
        self.disagreements = np.cumsum(disagree[order])

    def risk(self, threshold: float) -> tuple[float, float]:
        """(disagreement rate of the kept answers, kept share) at ``logprob >= threshold``."""
        kept = int(np.searchsorted(-self.descending, -threshold, side="right"))
        if kept == 0:
            return 0.0, 0.0
        return float(self.disagreements[kept - 1] / kept), kept / len(self.descending)

    def oracle(self, target: float) -> float:
        """The loosest threshold whose kept disagreement meets ``target`` (bisection)."""
        low, high = float(self.descending[-1]), float(self.descending[0])
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (low, middle) if self.risk(middle)[0] <= target else (middle, high)
        return high


class QuestionBook:
    """The scripted questions: ``q<index>`` in the user message picks one."""

    def __init__(self) -> None:
        self.questions: list[Question] = []

    def add(self, world: World, rng: np.random.Generator, n: int) -> list[int]:
        d, logprob, disagree = world.draw(rng, n)
        start = len(self.questions)
        self.questions += [Question(float(a), float(b), not bool(c)) for a, b, c in zip(d, logprob, disagree,
                                                                                        strict=True)]
        return list(range(start, len(self.questions)))

    def put(self, logprob: float, agree: bool) -> int:
        """One scripted question with a known confidence and verdict."""
        self.questions.append(Question(0.0, logprob, agree))
        return len(self.questions) - 1

    def of(self, messages: Sequence[ChatMessage]) -> Question:
        return self.questions[int(messages[-1].content.removeprefix("q"))]


class ScriptedTier(Backend):
    """``small``: answers "A" (agreeing) or "B" with the question's logprob; ``large``: always "A".
    ``gate``: when set, the large tier waits for it before answering (a slow upstream)."""

    def __init__(self, name: str, book: QuestionBook, *, small: bool) -> None:
        super().__init__(name)
        self.book, self.small = book, small
        self.calls = 0
        self.gate: asyncio.Event | None = None

    @property
    def model_name(self) -> str:
        return f"scripted-{self.name}"

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=self.small, prefix_continuation=True)

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        self.calls += 1
        question = self.book.of(messages)
        if self.gate is not None and not self.small:
            await self.gate.wait()
        text = ("A" if question.agree else "B") if self.small else "A"
        logprob = question.logprob if self.small else -0.01
        yield TokenChunk(text=text, logprobs=(TokenLogprob(token=text, logprob=logprob),), token_ids=(1,))
        yield GenerationDone(finish_reason="stop", prompt_tokens=10, completion_tokens=1, model=self.model_name)

    async def render_chat_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        return f"<{messages[-1].content}>"  # hand-off: the large tier continues "<q7>" + prefix

    async def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams
                                ) -> AsyncIterator[GenerationEvent]:
        self.calls += 1
        yield TokenChunk(text="A", logprobs=(TokenLogprob(token="A", logprob=-0.01),), token_ids=(1,))
        yield GenerationDone(finish_reason="stop", prompt_tokens=10, completion_tokens=1, model=self.model_name)


def selfcal_cascade(book: QuestionBook, selfcal: dict[str, Any], *, threshold: float = -0.5,
                    mode: str = "buffer", early_exit: dict[str, Any] | None = None, large_price: float = 1.0,
                    store: MemoryStore | None = None, judges: dict[str, Backend] | None = None
                    ) -> tuple[Cascade, MemoryStore, TaskRunner]:
    """The real Cascade strategy over the scripted pair, with the in-memory runner and a store
    (a new one, or ``store``: another replica's)."""
    tier: dict[str, Any] = {"backend": "small", "scorer": "mean_logprob", "threshold": threshold,
                            "self_calibration": selfcal}
    if early_exit is not None:
        tier["early_exit"] = early_exit
    config = CascadeStrategy.model_validate({"type": "cascade", "mode": mode, "tiers": [tier, {"backend": "large"}]})
    store, runner = store or MemoryStore(), TaskRunner()
    backends: dict[str, Backend] = {"small": ScriptedTier("small", book, small=True),
                                    "large": ScriptedTier("large", book, small=False), **(judges or {})}
    prices = {"small": Price(), "large": Price(input_per_1m=large_price, output_per_1m=large_price)}
    resources = GatewayResources(backends=backends, prices=prices, shadow=runner, selfcal_store=store)
    runner.resources = resources
    return Cascade("cascade", config, resources), store, runner


async def ask(strategy: Cascade, question: int, request_id: str = "r") -> tuple[str, RequestRecord]:
    """One request through the strategy: the answer text and the client's record."""
    record = RequestRecord(request_id=request_id, public_model=strategy.public_name, endpoint="chat", stream=False)
    ctx = RequestContext(record, strategy.resources)
    view = ChatRequestView(messages=[ChatMessage(role="user", content=f"q{question}")],
                           params=SamplingParams(max_tokens=4), stream=False)
    texts = []
    async for event in strategy.chat(view, ctx):
        if isinstance(event, TokenChunk):
            texts.append(event.text)
        else:
            assert isinstance(event, AnswerDone)
    return "".join(texts), record


def kept_threshold(strategy: Cascade, configured: float) -> float:
    """The raw threshold deciding now: the shared state's when it applies, else the configured one."""
    state = strategy.calibrators[0].state
    return state.threshold if state is not None else configured
