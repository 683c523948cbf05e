"""The self-calibrating cascade on the shipped pair: does the agreement it *estimates* for its kept
answers match the agreement *measured* on every question?

    .venv/bin/python -m loadtests.bench_selfcal_qwen --questions 240 --replays 40

1. **Both tiers on every question, offline.** Qwen2.5-Coder 0.5B and 1.5B (in-process, llama.cpp,
   greedy, the GGUFs of ``policies/examples/code.yaml``) answer a seeded sample of MMLU dev; the
   answers (text, token logprobs with alternatives, token counts) are cached in ``--cache``.
2. **The real self-calibration path, replayed.** The gateway's own cascade strategy (with
   ``self_calibration`` on its small tier: normalised-letter judge, ``--sample-rate``, refits every
   20 labels), the gateway's shadow runner, the self-calibration store (SQLite), the accounting
   service and the report code run over the questions, one client request each, with backends
   that replay each model's cached answer token by token (the models' real outputs and logprobs;
   only the compute is skipped). Shadow jobs ask the "large" replay for its answer, judges label,
   the recalibrator moves the threshold, the store keeps the state.
3. **Estimate vs measurement.** The report's estimate — kept labels' agreement with its 95 %
   Clopper–Pearson interval — against the agreement of the small and large answers over *every*
   request the cascade kept (both tiers answered everything in step 1). Repeated over ``--replays``
   sampling seeds (question order and the labelling coin), counting how often the interval covers
   the measured value; a 95 % interval should cover it in about 95 % of the runs or more.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.accounting.finalize import finalize_record
from gateway.accounting.metrics import GatewayMetrics
from gateway.accounting.selfcal_report import summarize, window_phrase
from gateway.accounting.selfcal_sqlite import SQLiteSelfCalStore
from gateway.accounting.service import build_accounting
from gateway.accounting.window import minute_window
from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.protocol import new_id
from gateway.core.record import RequestRecord
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from gateway.runtime import PolicyRuntime
from gateway.serving.selfcal_service import SelfCalService
from loadtests.bench_report import machine_line
from policies.loader import parse_policy
from routers.cascade.config import CascadeStrategy
from routers.cascade.offline.answers import AnswerCache, BackendAnswer, answers_for
from routers.cascade.offline.labelled import LabelledItem, answer_letter, load_labelled
from routers.cascade.selfcal.judges.base import Answer
from routers.cascade.strategy import Cascade

REPO = Path(__file__).resolve().parent.parent
MMLU = REPO.parent / "shared" / "data" / "mmlu" / "dev.jsonl"
MODELS = Path(os.environ.get("SLM_GATEWAY_MODELS") or Path.home() / ".cache" / "slm-gateway" / "models")
SMALL, LARGE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
PRICES = {"small": {"input_per_1m": 0.05, "output_per_1m": 0.10}, "large": {"input_per_1m": 0.15,
                                                                             "output_per_1m": 0.30}}
COMMAND = "python -m loadtests.bench_selfcal_qwen"


async def generate(items: list[LabelledItem], cache_path: Path, concurrency: int) -> dict[str, list[BackendAnswer]]:
    policy = parse_policy({"version": 1, "backends": {
        name: {"type": "local", "model": str(MODELS / path), "threads": 1, "max_batch_size": 4,
               "context_length": 2048, "timeouts": {"first_token": 900, "total": 1800, "idle": 900}}
        for name, path in (("small", SMALL), ("large", LARGE))},
        "models": {"small": {"type": "static", "backend": "small"}}})
    runtime = await PolicyRuntime.start(policy)
    cache = AnswerCache.open(cache_path)
    try:
        return {name: await answers_for(name, runtime.backends[name], items, concurrency, cache, name)
                for name in ("small", "large")}
    finally:
        await runtime.close()


class ReplayBackend(Backend):
    """Streams a model's cached greedy answer to each question (its tokens and logprobs as generated)."""

    def __init__(self, name: str, model: str, answers: dict[str, BackendAnswer]) -> None:
        super().__init__(name)
        self._model = model
        self._answers = answers

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True)

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        answer = self._answers[question_key(messages)]
        for token in answer.logprobs:
            yield TokenChunk(token.token, (token,) if params.logprobs else ())
            await asyncio.sleep(0)
        yield GenerationDone("stop", answer.prompt_tokens, answer.completion_tokens, self._model)

    async def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams
                                ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError("the replay serves chat only")
        yield  # pragma: no cover - makes this an async generator


def question_key(messages: Sequence[ChatMessage]) -> str:
    return next(m.content for m in reversed(messages) if m.role == "user")


def cascade_config(sample_rate: float, scorer: str, threshold: float, target: float, apply: bool) -> dict[str, Any]:
    selfcal = {"judge": {"type": "normalized", "extract": "letter"}, "sample_rate": sample_rate, "apply": apply,
               "max_concurrent": 64, "budget_usd_per_day": 100.0, "max_disagreement": target, "confidence": 0.95,
               "min_labels": 60, "refit_every": 20, "window": 2000, "candidates": 20}
    return {"type": "cascade", "mode": "buffer",
            "tiers": [{"backend": "small", "scorer": scorer, "threshold": threshold, "self_calibration": selfcal},
                      {"backend": "large"}]}


async def replay_run(items: list[LabelledItem], answers: dict[str, list[BackendAnswer]], seed: int,
                     args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One pass of the real strategy + service over the questions, in a seeded order."""
    config = cascade_config(args.sample_rate, args.scorer, args.threshold, args.target, not args.monitor_only)
    policy = parse_policy({"version": 1, "gateway": {"reference_llm": "large"},
                           "backends": {name: {"type": "echo", "price": price} for name, price in PRICES.items()},
                           "models": {"cascade": config}})
    by_question = {name: {question_key(item.messages): a for item, a in zip(items, rows, strict=True)}
                   for name, rows in answers.items()}
    backends: dict[str, Backend] = {name: ReplayBackend(name, name, rows) for name, rows in by_question.items()}
    resources = GatewayResources(backends=backends, prices={n: policy.backends[n].price for n in PRICES})
    accounting = build_accounting(None, workdir / f"run-{seed}")
    store = SQLiteSelfCalStore(workdir / f"run-{seed}" / "selfcal.sqlite3")
    service = SelfCalService(store, accounting, GatewayMetrics())
    await accounting.start()
    service.wire(policy, resources)
    strategy = Cascade("cascade", CascadeStrategy.model_validate(config), resources)
    await strategy.start()
    strategy.calibrators[0].random.seed(seed)
    judge = strategy.calibrators[0].judge
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    kept_agree: list[bool] = []
    try:
        for index in order:
            item = items[index]
            record = RequestRecord(request_id=new_id("req"), public_model="cascade", endpoint="/v1/chat/completions",
                                   stream=False)
            ctx = RequestContext(record, resources)
            request = ChatRequestView(messages=item.messages, params=SamplingParams(max_tokens=item.max_tokens,
                                                                                     temperature=0.0), stream=False)
            async for _event in strategy.chat(request, ctx):
                pass
            finalize_record(record, policy.backends["large"].price)
            await accounting.submit(record)
            # Replayed answers come back in microseconds; real ones take seconds, in which the shadow
            # job labels and refits. Waiting for it keeps the state's pace that of a real deployment.
            await service.jobs.wait_idle(60)
            if not record.escalated:  # measured with the labels' own judge, on the pair both tiers gave
                small, large = Answer(answers["small"][index].text), Answer(answers["large"][index].text)
                verdict = await judge.judge(request, small, large, RequestContext(record, resources))
                kept_agree.append(verdict.agree)
        assert await service.jobs.wait_idle(120)
        assert await accounting.wait_idle()
        first, last = minute_window("1d", None)
        totals = await accounting.totals("1d", None, "model")
        [summary] = await summarize(store, totals, first, last, window_phrase("1d"))
    finally:
        await service.close(grace_s=10.0)
        await accounting.close()
    agreement = summary.agreement
    measured = float(np.mean(kept_agree)) if kept_agree else float("nan")
    covered = agreement.low is not None and agreement.high is not None and agreement.low <= measured <= agreement.high
    return {"seed": seed, "kept": len(kept_agree), "measured": measured, "estimate": agreement.estimate,
            "low": agreement.low, "high": agreement.high, "labels": agreement.labels, "covered": covered,
            "state": summary.state, "sentence": summary.sentence(), "escalation_rate": summary.escalation_rate,
            "shadow_jobs": summary.shadow_jobs, "shadow_cost_usd": summary.shadow_cost_usd,
            "savings_usd": summary.savings_usd}


def same_letter(small: BackendAnswer, large: BackendAnswer) -> bool:
    letter = answer_letter(small.text)
    return letter is not None and letter == answer_letter(large.text)


def report(args: argparse.Namespace, items: list[LabelledItem], answers: dict[str, list[BackendAnswer]],
           runs: list[dict[str, Any]], generation_s: float, load: tuple[float, float]) -> str:
    small, large = answers["small"], answers["large"]
    accuracy = {name: float(np.mean([a.correct for a in rows])) for name, rows in answers.items()}
    agree_all = float(np.mean([same_letter(s, g) for s, g in zip(small, large, strict=True)]))
    first = runs[0]
    covered = sum(run["covered"] for run in runs)
    gaps = [abs(run["estimate"] - run["measured"]) for run in runs if run["estimate"] is not None] or [math.nan]
    widths = [run["high"] - run["low"] for run in runs if run["low"] is not None] or [math.nan]
    state = first["state"]
    mode = "apply: false, monitoring only" if args.monitor_only else "apply: true"
    final = "no refit stored" if state is None else (
        f"threshold {state.threshold:.4g} (raw), version {state.version}, reason {state.reason}, disagreement "
        f"bound {state.disagreement_bound:.3f} on {state.labels_used} labels, keeping {state.kept_share:.1%} of them")
    lines = [
        "## Self-calibrating cascade on the shipped pair: estimated vs measured agreement of kept answers",
        "",
        f"`{COMMAND} --questions {args.questions}{f' --first {args.first}' if args.first else ''} "
        f"--replays {args.replays} --sample-rate {args.sample_rate} "
        f"--scorer {args.scorer} --threshold {args.threshold} --target {args.target}"
        f"{' --monitor-only' if args.monitor_only else ''}` — {machine_line()}; "
        f"SLM_GATEWAY_THREADS=1; load average at start / end {load[0]:.1f} / {load[1]:.1f}; generating both "
        f"models' answers took {generation_s / 60:.0f} min (cached afterwards), the {args.replays} replays "
        "seconds each.",
        "",
        f"{len(items)} MMLU dev questions (seeded sample), greedy, max_tokens 8. Qwen2.5-Coder-0.5B accuracy "
        f"{accuracy['small']:.3f}, 1.5B {accuracy['large']:.3f}; their answers agree (same letter) on "
        f"{agree_all:.1%} of all questions. Cascade: small tier scored by `{args.scorer}`, configured threshold "
        f"{args.threshold}, `self_calibration` ({mode}) with the normalised-letter judge, sample rate "
        f"{args.sample_rate}, "
        f"target disagreement {args.target} at 95 %, refit every 20 labels, loosening from 60 labels.",
        "",
        f"Seed {first['seed']}: {first['sentence']}. The cascade kept {first['kept']} of {len(items)} requests; "
        f"their measured agreement with the large model is {first['measured']:.1%}, the estimate from "
        f"{first['labels']} kept labels {_interval(first)} "
        f"({'covers' if first['covered'] else 'misses'} it). Final state: {final}; {first['shadow_jobs']} shadow "
        f"jobs cost ${first['shadow_cost_usd']:.6f}.",
        "",
        f"Over {len(runs)} replays (seeds 0–{len(runs) - 1}: question order and labelling coin): the 95 % "
        f"interval covered the measured agreement in {covered} / {len(runs)} ({covered / len(runs):.0%}); "
        f"|estimate − measured| mean {np.mean(gaps):.3f} (max {np.max(gaps):.3f}); interval width mean "
        f"{np.mean(widths):.3f}; kept share mean {1 - np.mean([r['escalation_rate'] for r in runs]):.1%}.",
    ]
    return "\n".join(lines)


def _interval(run: dict[str, Any]) -> str:
    if run["estimate"] is None:
        return "none (no kept labels)"
    return f"{run['estimate']:.1%} [{run['low']:.1%}, {run['high']:.1%}]"


async def main_async(args: argparse.Namespace) -> str:
    load_start = os.getloadavg()[0]
    items = load_labelled(MMLU, args.questions, seed=args.seed)[:args.first]
    started = time.perf_counter()
    answers = await generate(items, args.cache, args.concurrency)
    generation_s = time.perf_counter() - started
    workdir = Path(tempfile.mkdtemp(prefix="bench-selfcal-"))
    runs = [await replay_run(items, answers, seed, args, workdir) for seed in range(args.replays)]
    return report(args, items, answers, runs, generation_s, (load_start, os.getloadavg()[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--questions", type=int, default=240)
    parser.add_argument("--replays", type=int, default=40)
    parser.add_argument("--seed", type=int, default=22, help="which MMLU dev questions")
    parser.add_argument("--first", type=int, default=None, help="only the first N of the sample (a shorter run "
                        "that reuses a longer one's cached answers)")
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--scorer", default="first_token_margin")
    parser.add_argument("--threshold", type=float, default=0.5, help="configured threshold (until a refit)")
    parser.add_argument("--target", type=float, default=0.15, help="max_disagreement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--monitor-only", action="store_true", help="apply: false (the configured threshold decides)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "slmgw-selfcal-qwen-mmlu.json")
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
