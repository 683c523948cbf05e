"""Run labelled questions through backends and through a cascade, for calibration and evaluation.

Everything goes through the gateway's own code: backends started by :class:`PolicyRuntime`, the
cascade strategy's ``chat`` with a real :class:`RequestContext`, and the accounting finaliser for
cost — so the figures are what the gateway would record in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from gateway.accounting.finalize import finalize_record
from gateway.core.backend import Backend, GenerationDone, SamplingParams, TokenChunk, TokenLogprob
from gateway.core.protocol import new_id
from gateway.core.record import RequestRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, RequestContext
from gateway.runtime import PolicyRuntime
from policies.schema import Policy
from routers.cascade.calibration import apply_calibration
from routers.cascade.config import CascadeStrategy
from routers.cascade.offline.labelled import LabelledItem
from routers.cascade.scorers import SCORERS

T = TypeVar("T")
ANSWER_PARAMS = SamplingParams(max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=5)


@dataclass(frozen=True, slots=True)
class BackendAnswer:
    text: str
    logprobs: list[TokenLogprob]
    correct: bool
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CascadeAnswer:
    correct: bool
    escalated: bool
    cost_usd: float
    latency_s: float
    ttft_s: float | None
    confidence: float | None


async def gather_bounded(
    jobs: Sequence[Callable[[], Awaitable[T]]], concurrency: int, description: str
) -> list[T]:
    """Run jobs with at most ``concurrency`` in flight (the local engine batches them), in order."""
    semaphore = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(jobs), desc=description, unit="q")

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            result = await job()
            progress.update()
            return result

    try:
        return await asyncio.gather(*(run(job) for job in jobs))
    finally:
        progress.close()


async def ask_backend(backend: Backend, item: LabelledItem, params: SamplingParams = ANSWER_PARAMS) -> BackendAnswer:
    started = time.perf_counter()
    first: float | None = None
    text = ""
    logprobs: list[TokenLogprob] = []
    usage = (0, 0)
    async for event in backend.stream_chat(item.messages, params):
        if isinstance(event, TokenChunk):
            first = first or time.perf_counter()
            text += event.text
            logprobs.extend(event.logprobs)
        elif isinstance(event, GenerationDone):
            usage = (event.prompt_tokens, event.completion_tokens)
            break
    ttft = first - started if first else None
    return BackendAnswer(text, logprobs, item.is_correct(text), time.perf_counter() - started, ttft, *usage)


async def ask_cascade(runtime: PolicyRuntime, model: str, item: LabelledItem, *, stream: bool = False
                      ) -> CascadeAnswer:
    strategy = runtime.strategy(model)
    record = RequestRecord(request_id=new_id("eval"), public_model=model, endpoint="chat", stream=stream)
    ctx = RequestContext(record, strategy.resources)
    params = SamplingParams(max_tokens=ANSWER_PARAMS.max_tokens, temperature=0.0)
    request = ChatRequestView(messages=list(item.messages), params=params, stream=stream)
    started = time.perf_counter()
    first: float | None = None
    text = ""
    async for event in strategy.chat(request, ctx):
        if isinstance(event, AnswerDone):
            record.prompt_tokens, record.completion_tokens = event.prompt_tokens, event.completion_tokens
            break
        first = first or time.perf_counter()
        text += event.text
    record.latency_ms = (time.perf_counter() - started) * 1000
    finalize_record(record, runtime.reference_price)
    return CascadeAnswer(item.is_correct(text), bool(record.escalated), record.cost_usd,
                         record.latency_ms / 1000, (first - started) if first else None, record.confidence)


def summary(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"mean": None, "p50": None}
    return {"mean": sum(ordered) / len(ordered), "p50": ordered[len(ordered) // 2]}


@dataclass(frozen=True, slots=True)
class EvaluationRun:
    """One labelled set answered three ways: small tier alone, last tier alone, the cascade."""

    small: list[BackendAnswer]
    large: list[BackendAnswer]
    cascade: list[CascadeAnswer]


async def run_evaluation(runtime: PolicyRuntime, model: str, items: Sequence[LabelledItem],
                         concurrency: int) -> EvaluationRun:
    config = runtime.policy.models[model]
    assert isinstance(config, CascadeStrategy)
    small, large = (runtime.backends[t.backend] for t in (config.tiers[0], config.tiers[-1]))
    return EvaluationRun(
        await gather_bounded([partial(ask_backend, small, i) for i in items], concurrency, "small alone"),
        await gather_bounded([partial(ask_backend, large, i) for i in items], concurrency, "large alone"),
        await gather_bounded([partial(ask_cascade, runtime, model, i) for i in items], concurrency, "cascade"),
    )


def scorer_auroc(answers: Sequence[BackendAnswer]) -> dict[str, float | None]:
    """How well each raw scorer separates right from wrong small-model answers (0.5 = chance)."""
    from sklearn.metrics import roc_auc_score

    correct = [a.correct for a in answers]
    if len(set(correct)) < 2:
        return dict.fromkeys(SCORERS)
    out: dict[str, float | None] = {}
    for name, scorer in SCORERS.items():
        raw = np.nan_to_num(np.array([scorer(a.logprobs) for a in answers]), neginf=-1e9)
        out[name] = round(float(roc_auc_score(correct, raw)), 4)
    return out


def evaluation_metrics(run: EvaluationRun, policy: Policy, model: str) -> tuple[dict[str, Any], Any]:
    """The figures ``slm-gateway eval`` prints, and the quality-vs-escalation curve (or None).

    The curve sweeps the first tier's threshold over the small model's own answers: at share s
    the least confident s of the questions take the large model's answer. APGR and the shares
    needed for 50 / 80 / 95 % of the gap are RouteLLM's definitions (routers.learned.offline.metrics).
    """
    from routers.learned.offline.metrics import cpt, router_metrics

    config = policy.models[model]
    assert isinstance(config, CascadeStrategy)
    small, large = config.tiers[0], config.tiers[-1]
    n = len(run.cascade)
    small_ok = [a.correct for a in run.small]
    large_ok = [a.correct for a in run.large]
    confidence = [apply_calibration(small.calibration, SCORERS[small.scorer](a.logprobs)) for a in run.small]
    large_price = policy.backends[large.backend].price
    result: dict[str, Any] = {
        "n": n, "accuracy": sum(a.correct for a in run.cascade) / n,
        "escalation_rate": sum(a.escalated for a in run.cascade) / n,
        "small_accuracy": sum(small_ok) / n, "large_accuracy": sum(large_ok) / n,
        "cost_usd": sum(a.cost_usd for a in run.cascade),
        "large_alone_cost_usd": sum(large_price.cost(a.prompt_tokens, a.completion_tokens) for a in run.large),
        "latency_s": summary([a.latency_s for a in run.cascade]),
        "small_latency_s": summary([a.latency_s for a in run.small]),
        "large_latency_s": summary([a.latency_s for a in run.large]),
        "scorer_auroc": scorer_auroc(run.small),
        "apgr": None, "cpt50": None, "cpt80": None, "cpt95": None,
    }
    curve = None
    try:
        # Escalation order: least confident first, as the cascade's threshold sweeps.
        metrics, curve = router_metrics([-c for c in confidence], small_ok, large_ok, bins=None)
        result.update(apgr=metrics.apgr, cpt50=metrics.cpt50, cpt80=metrics.cpt80, cpt95=cpt(curve, 0.95))
    except ValueError as exc:  # the large model is not better on this sample: no gap to recover
        result["curve_error"] = str(exc)
    return result, curve
