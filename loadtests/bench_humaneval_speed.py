"""Where the time of a HumanEval dev evaluation goes, and what each speed change buys (issue 20).

    .venv/bin/python -m loadtests.bench_humaneval_speed --problems 8 --rounds 2

The Qwen2.5-Coder pair of policies/examples/code.yaml on the llama.cpp engine, the first N dev
problems, each model's greedy answers generated and graded as ``slm-gateway eval`` does
(:func:`ask_backend`). Printed:

* the engine's cost of one decode step at 1, 2, 4 and 8 sequences per model (one thread), wall and
  CPU time of the computing thread, i.e. what continuous batching can buy on this CPU;
* the numpy sampling cost per token (log-softmax and the top-5 alternatives over the vocabulary);
* the sandbox's cost per problem (one fresh interpreter per program);
* for each setup, run in alternating order on the same problems with a fresh runtime each time (no
  prefix cached from the previous setup): wall time, tokens generated, tokens/s per model, the
  answers that hit max_tokens, text generated after the code block closed, pass@1, and the CPU
  time (this process and its sandboxes), which a shared box distorts far less than wall time.

Setups: ``before`` = the first session's evaluation (tiers one after the other, 4 in flight, no
stop, one 4096 context of KV, the model writing the whole answer); ``restating`` = both tiers at
once, 8 in flight with room for them in the KV cache, stopped at the closing fence, the model still
writing the whole answer (it restates the signature and docstring); ``prefill`` = ``restating``
with the assistant's answer started for the model (``continue_final_message``: the code block and
the problem's prompt), so it writes the body, stopped where the function ends — what ``eval`` does
now (routers/cascade/offline/humaneval.py); ``prefill-once`` = ``prefill`` with the problem's code
in the prefill only, the user message only asking (faster, worse: docs/collaboration.md);
``restating-terse`` = ``restating`` with an instruction not to repeat the docstring (measured: no
effect). The 15 min target is for 100 problems: the projections scale the measured times by
100 / N. ``--answers FILE`` runs no model:
it reads an eval answer cache and prints where its tokens went.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gateway.backends.local.backend import load_engine
from gateway.backends.local.config import LocalBackend
from gateway.backends.local.llamacpp.engine import LlamaCppEngine
from gateway.backends.local.sampling import draw_token
from gateway.core.backend import ChatMessage
from gateway.runtime import PolicyRuntime
from loadtests.bench_report import machine_line
from policies.loader import load_policy
from policies.schema import Policy
from routers.cascade.code import FENCE, code_tokens
from routers.cascade.offline.answers import (
    AnswerCache,
    BackendAnswer,
    _decode,
    answer_params,
    ask_backend,
    gather_bounded,
)
from routers.cascade.offline.humaneval import SYSTEM, program_for
from routers.cascade.offline.labelled import LabelledItem, load_labelled
from routers.cascade.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "dev.jsonl"
POLICY = REPO / "policies" / "examples" / "code.yaml"
TIERS = ("small", "large")


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    concurrent_tiers: bool
    in_flight: int
    stop: tuple[str, ...] | None  # None: the task's (humaneval.STOP)
    kv_tokens: int  # the KV pool of each model (the first session's default: one 4096 context)
    prefill: bool = True  # the assistant's answer started for the model (continue_final_message)
    code_once: bool = False  # the problem's code in the prefill only, the user message only asking
    system: str | None = None  # another instruction than the task's (None: humaneval.SYSTEM)


# Without a prefill the Instruct models restate the prompt's signature and docstring before the
# body: ~2/3 of the tokens of an answer. An instruction asking them not to was tried (no effect).
TERSE = (SYSTEM + " Do not repeat the docstring.")
RESTATING_STOP = ("\n```\n",)  # the closing fence; the task's stops would cut a restated answer
SETUPS = {
    "before": Setup("before", concurrent_tiers=False, in_flight=4, stop=(), kv_tokens=4096, prefill=False),
    "restating": Setup("restating", concurrent_tiers=True, in_flight=8, stop=RESTATING_STOP, kv_tokens=8192,
                       prefill=False),
    "restating-terse": Setup("restating-terse", concurrent_tiers=True, in_flight=8, stop=RESTATING_STOP,
                             kv_tokens=8192, prefill=False, system=TERSE),
    "prefill": Setup("prefill", concurrent_tiers=True, in_flight=8, stop=None, kv_tokens=8192),
    "prefill-once": Setup("prefill-once", concurrent_tiers=True, in_flight=8, stop=None, kv_tokens=8192,
                          code_once=True),
}
# The better of the two wordings measured for the code-once form (docs/collaboration.md, "Speed").
ONCE = ("Implement the following Python function: write its complete, working body, never a placeholder such as "
        "`pass` or `# Your code here`.")


@dataclass(frozen=True, slots=True)
class TierRun:
    answers: list[BackendAnswer]
    wall_s: float


def configured(policy: Policy, setup: Setup) -> Policy:
    backends = {}
    for name, config in policy.backends.items():
        assert isinstance(config, LocalBackend)
        update: dict[str, Any] = {"max_batch_size": max(config.max_batch_size, setup.in_flight),
                                  "kv_tokens": setup.kv_tokens}
        backends[name] = config.model_copy(update=update)
    return policy.model_copy(update={"backends": backends})


async def run_tier(runtime: PolicyRuntime, tier: str, items: list[LabelledItem], setup: Setup) -> TierRun:
    backend = runtime.backends[tier]
    if setup.code_once:
        user = ChatMessage(role="user", content=ONCE)
        items = [dataclasses.replace(item, messages=[item.messages[0], user, *item.messages[2:]]) for item in items]
    if not setup.prefill:  # the system and user messages only: the model writes the whole answer
        items = [dataclasses.replace(item, messages=item.messages[:2]) for item in items]
    if setup.system is not None:
        system = ChatMessage(role="system", content=setup.system)
        items = [dataclasses.replace(item, messages=[system, *item.messages[1:]]) for item in items]
    params = [answer_params(item) for item in items]
    if setup.stop is not None:
        params = [replace(p, stop=setup.stop) for p in params]
    if not setup.prefill:
        params = [replace(p, extra={}) for p in params]
    started = time.perf_counter()
    jobs = [partial(ask_backend, backend, item, p) for item, p in zip(items, params, strict=True)]
    answers = await gather_bounded(jobs, setup.in_flight, f"{setup.name} {tier}")
    return TierRun(answers, time.perf_counter() - started)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the sandboxes): what a run costs the
    machine whatever else runs on it (wall time on a shared box mostly measures the others)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True, slots=True)
class SetupRun:
    tiers: dict[str, TierRun]
    wall_s: float
    cpu_s: float


async def run_setup(policy: Policy, items: list[LabelledItem], setup: Setup) -> SetupRun:
    runtime = await PolicyRuntime.start(configured(policy, setup))
    try:
        started, cpu = time.perf_counter(), cpu_seconds()
        if setup.concurrent_tiers:
            runs = await asyncio.gather(*(run_tier(runtime, tier, items, setup) for tier in TIERS))
        else:
            runs = [await run_tier(runtime, tier, items, setup) for tier in TIERS]
        return SetupRun(dict(zip(TIERS, runs, strict=True)), time.perf_counter() - started, cpu_seconds() - cpu)
    finally:
        await runtime.close()


def after_block(text: str) -> int:
    """Characters generated after the first code block closed."""
    match = FENCE.search(text)
    return 0 if match is None or not text[match.end():].strip() else len(text) - match.end()


def step_costs(policy: Policy) -> list[str]:
    """Seconds per decode step at 1/2/4/8 sequences, one thread, each model (engine not started)."""
    lines = []
    for tier in TIERS:
        config = policy.backends[tier]
        assert isinstance(config, LocalBackend)
        engine = load_engine(tier, config.model_copy(update={"threads": 1}))
        try:
            assert isinstance(engine, LlamaCppEngine)
            engine.time_decode(1, steps=4)  # warm-up: page faults
            costs, cpu = {}, {}
            for rows in (1, 2, 4, 8):
                # One thread: llama.cpp computes on the calling thread, so its CPU time is the
                # step's cost whatever else the box runs (the wall time is mostly the others).
                # Two runs differing by 16 steps: the difference leaves out their equal prefills.
                started = time.thread_time()
                engine.time_decode(1, steps=4, rows=rows)
                short = time.thread_time() - started
                started = time.thread_time()
                costs[rows] = engine.time_decode(1, steps=20, rows=rows)
                cpu[rows] = (time.thread_time() - started - short) / 16
        finally:
            engine.stop()
        lines.append(f"- {tier}: decode step " + ", ".join(
            f"{rows} seq {costs[rows] * 1e3:.0f} ms wall / {cpu[rows] * 1e3:.0f} ms CPU "
            f"({rows * cpu[1] / cpu[rows]:.2f}x the tokens per CPU-second of 1)" for rows in costs))
    return lines


def sampling_cost(vocab: int = 151_936, repeats: int = 200) -> float:
    logits = np.random.default_rng(0).standard_normal(vocab).astype(np.float32)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(repeats):
        draw_token(logits, 0.0, 1.0, True, 5, rng)
    return (time.perf_counter() - started) / repeats


def sandbox_cost(items: list[LabelledItem], answers: list[BackendAnswer]) -> float:
    sandbox = Sandbox()
    prefix = sandbox.network_prefix()
    started = time.perf_counter()
    for item, answer in zip(items, answers, strict=True):
        sandbox.run(program_for(item.problem, answer.text), prefix)
    return (time.perf_counter() - started) / len(items)


def describe(setup: Setup, result: SetupRun, n: int) -> str:
    parts = []
    for tier, run in result.tiers.items():
        tokens = sum(a.completion_tokens for a in run.answers)
        capped = sum(a.completion_tokens >= 512 for a in run.answers)
        tail = sum(after_block(a.text) for a in run.answers)
        fenced = sum(a.text.lstrip().startswith("```") for a in run.answers)
        ok = sum(a.correct for a in run.answers)
        parts.append(f"{tier}: {run.wall_s:.0f} s, {tokens} tokens ({tokens / run.wall_s:.1f}/s), "
                     f"{tokens / n:.0f} per answer, {capped} at max_tokens, {tail} chars after the block, "
                     f"{fenced}/{n} open with a fence, pass {ok}/{n}")
    wall, cpu = result.wall_s, result.cpu_s
    return (f"| {setup.name} | {wall:.0f} | {wall * 100 / n / 60:.1f} | {cpu:.0f} | {cpu * 100 / n / 120:.1f} | "
            + "; ".join(parts) + " |")


def token_breakdown(path: Path) -> list[str]:
    """Where an answer cache's tokens went, per model: prompt vs generated, and how much of the
    generated code restates the prompt (signature, docstring, imports) rather than writing the body."""
    items = {item.id: item for item in load_labelled(HUMANEVAL, task="humaneval")}
    totals: dict[str, dict[str, float]] = {}
    for key, row in AnswerCache.open(path).rows.items():
        name, _model, item_id, _digest = key.split("|")
        if item_id not in items:
            continue
        answer = _decode(row, items[item_id])
        entry = totals.setdefault(name, dict.fromkeys(("n", "prompt", "generated", "body", "capped", "tail", "s"), 0.0))
        body = code_tokens(answer.logprobs) if answer.logprobs else []
        entry["n"] += 1
        entry["prompt"] += answer.prompt_tokens
        entry["generated"] += answer.completion_tokens
        entry["body"] += len(body)
        entry["capped"] += answer.completion_tokens >= 512
        entry["tail"] += after_block(answer.text) > 0
        entry["s"] += answer.latency_s
    return [f"- {name}: {e['n']:.0f} answers, prompt {e['prompt'] / e['n']:.0f} tokens, generated "
            f"{e['generated'] / e['n']:.0f} per answer ({e['body'] / max(e['generated'], 1):.0%} of them the body; "
            f"the rest restates the prompt's signature/docstring, or is fences), {e['capped']:.0f} at max_tokens, "
            f"{e['tail']:.0f} with text after the block, mean latency {e['s'] / e['n']:.0f} s"
            for name, e in sorted(totals.items())]


async def main_async(args: argparse.Namespace) -> None:
    if args.answers is not None:
        print("\n".join(token_breakdown(args.answers)))
        return
    policy = load_policy(args.policy)
    items = load_labelled(HUMANEVAL, task="humaneval")[: args.problems]
    print(f"{machine_line()}; load average {os.getloadavg()[0]:.2f} at start; {len(items)} problems, "
          f"SLM_GATEWAY_THREADS={os.environ.get('SLM_GATEWAY_THREADS')}, policy threads per model 1")
    if not args.skip_micro:
        print("\n".join(await asyncio.to_thread(step_costs, policy)))
        print(f"- numpy sampling with logprobs + top-5, Qwen vocabulary: {sampling_cost() * 1e3:.2f} ms per token")
    print("\n| setup | wall s | wall min / 100 problems | CPU s | CPU min / 100 problems / 2 cores | per model |"
          "\n|---|---|---|---|---|---|")
    order = [SETUPS[name] for name in args.setups]
    last: dict[str, TierRun] = {}
    for round_index in range(args.rounds):
        for setup in order if round_index % 2 == 0 else order[::-1]:  # alternate who goes first
            load = os.getloadavg()[0]
            result = await run_setup(policy, items, setup)
            print(describe(setup, result, len(items)) + f" load {load:.1f}-{os.getloadavg()[0]:.1f}", flush=True)
            if args.dump is not None:  # the answers, to read what each setup generated
                args.dump.mkdir(parents=True, exist_ok=True)
                texts = {tier: [a.text for a in run.answers] for tier, run in result.tiers.items()}
                Path(args.dump, f"{setup.name}.json").write_text(json.dumps(texts, indent=1))
            last = result.tiers
    if last:
        per = await asyncio.to_thread(sandbox_cost, items, last["small"].answers)
        print(f"\nsandbox: {per * 1e3:.0f} ms per program (fresh interpreter, sequential); "
              f"load average {os.getloadavg()[0]:.2f} at end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", type=Path, default=POLICY)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=["restating", "prefill"])
    parser.add_argument("--answers", type=Path, default=None,
                        help="an eval answer cache: print where its tokens went, run no model")
    parser.add_argument("--dump", type=Path, default=None, help="directory for each setup's answers (JSON)")
    parser.add_argument("--skip-micro", action="store_true", help="skip the step, sampling costs")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
