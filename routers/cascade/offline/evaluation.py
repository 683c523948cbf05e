"""Run labelled questions through backends and through a cascade, for calibration and evaluation.

Everything goes through the gateway's own code: backends started by :class:`PolicyRuntime`, the
cascade strategy's ``chat`` with a real :class:`RequestContext`, and the accounting finaliser for
cost — so the figures are what the gateway would record in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from gateway.accounting.finalize import finalize_record
from gateway.core.backend import SamplingParams
from gateway.core.protocol import new_id
from gateway.core.record import RequestRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, RequestContext
from gateway.runtime import PolicyRuntime
from policies.schema import Policy
from routers.cascade.config import CascadeStrategy
from routers.cascade.offline.answers import (
    AnswerCache,
    BackendAnswer,
    answer_params,
    answers_for,
    ask_backend,
    gather_bounded,
)
from routers.cascade.offline.labelled import LabelledItem
from routers.cascade.offline.replay import CascadeAnswer, cascade_figures, confidences, replay, scorer_auroc_ci
from routers.cascade.scorers import SCORERS

__all__ = ["AnswerCache", "BackendAnswer", "CascadeAnswer", "EvaluationRun", "answer_params", "ask_backend",
           "ask_cascade", "evaluation_metrics",
           "gather_bounded", "run_evaluation", "scorer_auroc"]
CascadeMode = Literal["live", "replay"]


async def ask_cascade(runtime: PolicyRuntime, model: str, item: LabelledItem, *, stream: bool = False
                      ) -> CascadeAnswer:
    strategy = runtime.strategy(model)
    record = RequestRecord(request_id=new_id("eval"), public_model=model, endpoint="chat", stream=stream)
    ctx = RequestContext(record, strategy.resources)
    params = SamplingParams(max_tokens=item.max_tokens, temperature=0.0, stop=item.stop, extra=item.extra)
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
    correct = await asyncio.to_thread(item.is_correct, text)  # humaneval runs a subprocess
    return CascadeAnswer(correct, bool(record.escalated), record.cost_usd,
                         record.latency_ms / 1000, (first - started) if first else None, record.confidence)


def summary(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"mean": None, "p50": None}
    return {"mean": sum(ordered) / len(ordered), "p50": ordered[len(ordered) // 2]}


@dataclass(frozen=True, slots=True)
class EvaluationRun:
    """One labelled set answered three ways: small tier alone, last tier alone, the cascade
    (``mode``: through the real strategy, or replayed from the two tiers' answers)."""

    small: list[BackendAnswer]
    large: list[BackendAnswer]
    cascade: list[CascadeAnswer]
    mode: CascadeMode = "live"
    generation_s: float = 0.0  # wall time of the two tiers' answers (0 when all came from the cache)


async def run_evaluation(runtime: PolicyRuntime, model: str, items: Sequence[LabelledItem], concurrency: int,
                         *, cache: AnswerCache | None = None, mode: CascadeMode = "live") -> EvaluationRun:
    config = runtime.policy.models[model]
    assert isinstance(config, CascadeStrategy)
    cache = cache or AnswerCache(None)
    names = config.tiers[0].backend, config.tiers[-1].backend
    if names[1].startswith("model:"):
        raise ValueError(f"models.{model}: eval compares the tiers' backends; its last tier is {names[1]} "
                         "(evaluate a cascade whose last tier is that model's backend)")
    started = time.perf_counter()
    # Both tiers at once: each in-process model has its own engine thread (one core each on this
    # box), and each engine batches its ``concurrency`` requests; one tier after the other would
    # leave a core idle for the whole run.
    small, large = await asyncio.gather(*(answers_for(name, runtime.backends[name], items, concurrency, cache,
                                                      f"{name} alone") for name in names))
    generation_s = time.perf_counter() - started
    if mode == "replay":
        prices = [runtime.policy.backends[name].price for name in names]
        cascade = replay(config.tiers[0], small, large, *prices)
    else:
        cascade = await gather_bounded([partial(ask_cascade, runtime, model, i) for i in items], concurrency, "cascade")
    return EvaluationRun(small, large, cascade, mode, generation_s)


def scorer_auroc(answers: Sequence[BackendAnswer]) -> dict[str, float | None]:
    """How well each raw scorer separates right from wrong small-model answers (0.5 = chance)."""
    correct = [a.correct for a in answers]
    return {name: scorer_auroc_ci([scorer(a.logprobs) for a in answers], correct, rounds=0)[0]
            for name, scorer in SCORERS.items()}


def scorer_auroc_intervals(answers: Sequence[BackendAnswer]) -> dict[str, dict[str, Any]]:
    correct = [a.correct for a in answers]
    out = {}
    for name, scorer in SCORERS.items():
        auroc, interval = scorer_auroc_ci([scorer(a.logprobs) for a in answers], correct)
        out[name] = {"auroc": auroc, "ci95": interval}
    return out


def evaluation_metrics(run: EvaluationRun, policy: Policy, model: str, rounds: int = 1000
                       ) -> tuple[dict[str, Any], Any]:
    """The figures ``slm-gateway eval`` prints, and the quality-vs-escalation curve (or None).

    The curve sweeps the first tier's threshold over the small model's own answers: at share s
    the least confident s of the questions take the large model's answer (malformed code first
    with ``structural: python``, and code failing the prompt's examples with ``python_examples``).
    APGR and the shares needed for 50 / 80 / 95 % of the gap are
    RouteLLM's definitions (routers.learned.offline.metrics); ``escalation_for_95pct_large`` is the
    share needed for 95 % of the large model's own accuracy. ``ci95``: bootstrap intervals.
    """
    from routers.learned.offline.metrics import router_metrics

    config = policy.models[model]
    assert isinstance(config, CascadeStrategy)
    small, large = config.tiers[0], config.tiers[-1]
    n = len(run.cascade)
    small_ok = [a.correct for a in run.small]
    large_ok = [a.correct for a in run.large]
    confidence = confidences(small, run.small)
    small_price, large_price = policy.backends[small.backend].price, policy.backends[large.backend].price
    figures = cascade_figures(confidence, small_ok, large_ok, run.cascade, rounds)
    always_large = sum(large_price.cost(a.prompt_tokens, a.completion_tokens) for a in run.large)
    result: dict[str, Any] = {
        "n": n, "cascade_mode": run.mode, **figures["point"],
        "cost_usd": sum(a.cost_usd for a in run.cascade),
        "always_large_cost_usd": always_large, "large_alone_cost_usd": always_large,
        "always_small_cost_usd": sum(small_price.cost(a.prompt_tokens, a.completion_tokens) for a in run.small),
        "latency_s": summary([a.latency_s for a in run.cascade]),
        "small_latency_s": summary([a.latency_s for a in run.small]),
        "large_latency_s": summary([a.latency_s for a in run.large]),
        "generation_s": round(run.generation_s, 1),
        "scorer_auroc": scorer_auroc_intervals(run.small),
        "structural_failures": {"small": sum(a.fails(small.structural) is not None for a in run.small),
                                "large": sum(a.fails(small.structural) is not None for a in run.large)},
        "ci95": figures["ci95"],
    }
    curve = None
    try:
        # Escalation order: least confident first, as the cascade's threshold sweeps.
        _metrics, curve = router_metrics([-c for c in confidence], small_ok, large_ok, bins=None)
    except ValueError as exc:  # the large model is not better on this sample: no gap to recover
        result["curve_error"] = str(exc)
    return result, curve

