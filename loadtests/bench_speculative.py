"""Speculative decoding vs the target alone on HumanEval prompts: greedy, one thread, interleaved.

    .venv/bin/python loadtests/bench_speculative.py --prompts 10 --max-tokens 96            # in-process
    .venv/bin/python loadtests/bench_speculative.py --mode cost-model --prompts 6
    .venv/bin/python loadtests/bench_speculative.py --mode remote --prompts 4 --write

Target Qwen2.5-Coder-1.5B, drafts from Qwen2.5-Coder-0.5B and from prompt lookup (n-gram), all
on the llama.cpp engine; HumanEval prompts from ``../shared/data/humaneval/dev.jsonl`` (next
to the repository) as raw completions. Per prompt, in alternating order: the target alone (its
own generation; ``cost-model``: its scorer one row per step) and each speculative setup, every
one starting from a cached prompt (prefill excluded for all). Printed: tokens/s, the ratio
to the target alone (over all tokens, and the worst prompt), whether the output is
token-identical (a difference is classed as a float tie when the two tokens' logits are within
``TIE_LOGIT`` of each other at the first divergence), acceptance, target passes per token, the
measured c(k) and d, the roofline bound those costs and the measured acceptance imply, and
reached / roofline.

``--mode cost-model`` wraps the real scorers in a modelled memory-bound target: each call
sleeps until ``step * (1 + slope * (rows - 1))`` (default verify(5) / decode(1) = 1.4) and the
draft costs its file-size share of a step; the same strategy code then shows what it reaches
where the bound allows a speed-up. ``--mode remote`` serves the target from a second gateway
process and verifies over its /v1/completions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.backends.local.source import models_dir
from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    SamplingParams,
    TokenChunk,
    TokenScorer,
)
from gateway.core.record import RequestRecord
from gateway.core.strategy import GatewayResources, RequestContext
from loadtests.bench_report import machine_line, write_section
from loadtests.speculative_models import (
    Agreement,
    ModelledBackend,
    ModelledScorer,
    agreement,
    remote_agreement,
    remote_target,
)
from routers.speculative.controller import Costs, run_acceptance

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "dev.jsonl"


def coder(size: str) -> Path:
    return models_dir() / f"qwen2.5-coder-{size}-instruct-q4_k_m.gguf"


@dataclass
class Run:
    tokens: list[int]
    seconds: float
    stats: dict[str, Any] | None = None
    agreement: Agreement | None = None
    text: str = ""
    count: int = 0  # completion tokens (a remote stream carries text, not ids)

    def __post_init__(self) -> None:
        self.count = self.count or len(self.tokens)


@dataclass
class Setup:
    name: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    strategy: Any = None
    calibration_seconds: float = 0.0


GREEDY = SamplingParams(temperature=0.0)


async def alone_stream(backend: Backend, ids: list[int], max_tokens: int) -> Run:
    """The target alone: the backend's own generation."""
    tokens: list[int] = []
    texts: list[str] = []
    count = 0
    started = time.perf_counter()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    async for event in backend.stream_completion(CompletionPrompt(token_ids=ids), params):
        if isinstance(event, TokenChunk):
            tokens += event.token_ids
            texts.append(event.text)
        elif isinstance(event, GenerationDone):
            count = event.completion_tokens
    return Run(tokens, time.perf_counter() - started, text="".join(texts), count=count)


async def alone_scorer(scorer: TokenScorer, ids: list[int], max_tokens: int) -> Run:
    """The (modelled) target alone: one scorer row per decode step."""
    sequence, tokens = list(ids), list[int]()
    started = time.perf_counter()
    while len(tokens) < max_tokens:
        token = (await scorer.score_next_tokens(sequence, len(sequence))).argmax[-1]
        if token in scorer.eos_token_ids:
            break
        tokens.append(token)
        sequence.append(token)
    return Run(tokens, time.perf_counter() - started)


async def speculative_run(strategy: Any, ids: list[int], max_tokens: int) -> Run:
    record = RequestRecord("bench", "spec", "/v1/completions", stream=False)
    tokens: list[int] = []
    texts: list[str] = []
    started = time.perf_counter()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    async for event in strategy.completion(CompletionPrompt(token_ids=ids), params,
                                           RequestContext(record, strategy.resources)):
        if isinstance(event, TokenChunk):
            tokens += event.token_ids
            texts.append(event.text)
    stats = record.extra["speculative"]
    return Run(tokens, time.perf_counter() - started, stats, text="".join(texts), count=stats["emitted"])


def build(setup: Setup, backends: dict[str, Backend]) -> Any:
    from routers.speculative.config import SpeculativeStrategy
    from routers.speculative.strategy import Speculative

    config = SpeculativeStrategy.model_validate({"type": "speculative", "target": "target", **setup.config})
    return Speculative(setup.name, config, GatewayResources(backends=backends, prices={}))


def pooled_acceptance(setups: list[Setup]) -> dict[str, float]:
    """Each drafter's i.i.d. acceptance over every round any setup ran with it (acceptance is the
    drafter's property on these prompts, whichever setup measured it)."""
    kept: dict[str, list[int]] = {}
    for setup in setups:
        for run in setup.runs:
            for name, per in (run.stats or {}).get("drafters", {}).items():
                totals = kept.setdefault(name, [0, 0])
                totals[0] += per["accepted"]
                totals[1] += per["rejections"]
    return {name: run_acceptance(a, r) for name, (a, r) in kept.items()}


def roofline(setup: Setup, alphas: dict[str, float], max_k: int) -> float:
    """The speed-up bound of a setup: its measured costs and its drafters' pooled acceptance."""
    last = next(r.stats for r in reversed(setup.runs) if r.stats)["costs"]
    costs = Costs(last["decode_ms"] / 1000, {int(k): v for k, v in last["verify_cost"].items()}, last["draft_cost"])
    names = {"ngram" if "ngram" in d else d["backend"] for d in _drafts(setup.config["draft"])}
    return max([1.0, *(costs.best(n, alphas[n], max_k)[1] for n in names if n in alphas)])


def _drafts(draft: Any) -> list[dict[str, Any]]:
    return list(draft) if isinstance(draft, list) else [draft]


def table(setups: list[Setup], alone: list[Run], max_k: int) -> tuple[list[str], list[str]]:
    base_tokens, base_seconds = sum(r.count for r in alone), sum(r.seconds for r in alone)
    base_rate = base_tokens / base_seconds
    rows = ["| setup | tokens/s | vs alone (all) | worst prompt | identical | acceptance | target passes / token "
            "| roofline | reached / roofline |", "|---|---|---|---|---|---|---|---|---|",
            f"| target alone | {base_rate:.2f} | 1.00x | 1.00x | - | - | 1.00 | - | - |"]
    notes: list[str] = []
    alphas = pooled_acceptance(setups)
    for setup in setups:
        runs = setup.runs
        tokens, seconds = sum(r.count for r in runs), sum(r.seconds for r in runs)
        ratio = tokens / seconds / base_rate
        worst = min((r.count / r.seconds) / (a.count / a.seconds) for r, a in zip(runs, alone, strict=True))
        agreements = [r.agreement for r in runs if r.agreement is not None]
        same = sum(a.identical for a in agreements)
        ties = sum(a.tie for a in agreements)
        identical = f"{same}/{len(runs)}" + (f" (+{ties} float ties)" if ties else "")
        stats = [r.stats for r in runs if r.stats]
        drafted, accepted = sum(s["drafted"] for s in stats), sum(s["accepted"] for s in stats)
        passes = sum(s["target_passes"] for s in stats) / max(sum(s["emitted"] for s in stats), 1)
        bound = roofline(setup, alphas, max_k)
        acceptance = f"{accepted / drafted:.2f}" if drafted else "-"
        rows.append(f"| {setup.name} | {tokens / seconds:.2f} | {ratio:.2f}x | {worst:.2f}x | {identical} | "
                    f"{acceptance} | {passes:.2f} | {bound:.2f}x | {ratio / bound:.2f} |")
        costs = stats[-1]["costs"]
        alone_share = sum(s["alone_tokens"] for s in stats) / max(sum(s["emitted"] for s in stats), 1)
        modelled = [s["modelled_speedup"] for s in stats if s["modelled_speedup"]]
        notes.append(
            f"- {setup.name}: decode step {costs['decode_ms']:.1f} ms; c(k) = "
            + ", ".join(f"c({k}) {v:.2f}" for k, v in costs["verify_cost"].items())
            + "; d = " + (", ".join(f"{n} {v:.2f}" for n, v in costs["draft_cost"].items()) or "0 (n-gram)")
            + "; alpha (i.i.d. fit, pooled) " + ", ".join(f"{n} {a:.2f}" for n, a in alphas.items())
            + f"; tokens decoded by the target alone {alone_share:.0%}; costs' prediction for the rounds run "
            + f"{np.mean(modelled) if modelled else 1.0:.2f}x; calibration "
            + f"{setup.calibration_seconds:.1f} s (first request, not timed)"
            + "; " + "; ".join(f"p{i}: {r.agreement.cell()}" for i, r in enumerate(runs)
                                if r.agreement and not r.agreement.identical))
    return rows, notes


EDIT = ("Rewrite this Python function exactly as it is, but with a short comment above every `return` "
        "line. Reply with the code only.\n\n```python\n{code}```")


async def load_prompts(count: int, task: str, renderer: Backend) -> list[str]:
    """``complete``: the problem's prompt as a raw completion (the model writes the body).
    ``edit``: a chat turn asking to restate the problem's reference solution with comments — an
    answer that repeats its prompt, where prompt lookup drafts well."""
    if not HUMANEVAL.exists():
        raise SystemExit(f"{HUMANEVAL} not found (the shared data directory next to the repository)")
    problems = [json.loads(line) for line in HUMANEVAL.read_text().splitlines()[:count]]
    if task == "complete":
        return [str(p["prompt"]) for p in problems]
    prompts = []
    for problem in problems:
        message = ChatMessage(role="user", content=EDIT.format(code=problem["prompt"] + problem["canonical_solution"]))
        prompts.append(await renderer.render_chat_prompt([message]) or "")
    return prompts


async def local_backend(path: Path, threads: int) -> Backend:
    from gateway.backends.local.backend import LocalModelBackend
    from gateway.backends.local.config import LocalBackend

    backend = LocalModelBackend(path.stem, LocalBackend(type="local", model=str(path), engine="llamacpp",
                                                        threads=threads, context_length=4096))
    await backend.start()
    return backend


def spec_setups(mode: str, max_k: int) -> list[Setup]:
    """Adaptive setups, and fixed-k ones beside them (they measure each drafter's acceptance
    even where the adaptive controller declines to speculate, and show what adaptation avoids)."""
    ngram = {"ngram": {"max_n": 3, "min_n": 1, "k": max_k}}
    small = {"backend": "draft"}
    common: dict[str, Any] = {"max_k": max_k}
    k_ngram, k_small = min(8, max_k), min(4, max_k)
    fixed_ngram = Setup(f"n-gram, fixed k={k_ngram}", {"draft": ngram, "k": k_ngram, "adaptive_k": False, **common})
    fixed_small = Setup(f"0.5B draft, fixed k={k_small}", {"draft": small, "k": k_small, "adaptive_k": False,
                                                           **common})
    both = Setup("n-gram + 0.5B, adaptive", {"draft": [ngram, small], **common})
    if mode == "remote":  # remote verification needs a model drafter (its tokenizer makes the ids)
        return [Setup("0.5B draft, adaptive", {"draft": small, **common}), both, fixed_small]
    return [Setup("n-gram, adaptive", {"draft": ngram, **common}), fixed_ngram,
            Setup("0.5B draft, adaptive", {"draft": small, **common}), fixed_small, both]


async def run(args: argparse.Namespace) -> str:
    target = await local_backend(coder("1.5b"), args.threads) if args.mode != "remote" else None
    draft = await local_backend(coder("0.5b"), args.threads)
    server, remote = None, None
    note = ""
    try:
        draft_scorer = draft.token_scorer()
        assert draft_scorer is not None
        backends: dict[str, Backend] = {"draft": draft}
        if args.mode == "remote":
            server, remote = await remote_target(coder("1.5b"), args.threads)
            backends["target"] = remote
            target_scorer = draft_scorer  # same vocabulary: only tokenises and scores ties
        else:
            assert target is not None
            target_scorer = target.token_scorer()  # type: ignore[assignment]
            assert target_scorer is not None
            backends["target"] = target
        if args.mode == "cost-model":
            step, note = await modelled_step(target_scorer, draft, args)
            target_scorer = ModelledScorer(target_scorer, step, args.slope)
            draft_share = coder("0.5b").stat().st_size / coder("1.5b").stat().st_size
            backends = {"target": ModelledBackend("target", target_scorer),
                        "draft": ModelledBackend("draft", ModelledScorer(draft_scorer, step * draft_share, args.slope))}
            note += f" Draft step modelled at {draft_share:.2f} of a target step (its share of the bytes read)."
        setups = spec_setups(args.mode, args.max_k)
        prompts = await load_prompts(args.prompts, args.task, draft)
        ids_of = [await draft_scorer.tokenize(p) for p in prompts]
        for setup in setups:  # calibration (first request), untimed
            setup.strategy = build(setup, backends)
            await setup.strategy.start()
            first = await speculative_run(setup.strategy, ids_of[0], 4)
            setup.calibration_seconds = first.stats["calibration_seconds"] if first.stats else 0.0
        alone: list[Run] = []
        noise: list[float] = []  # per prompt: time of the second alone run over the first
        for i, ids in enumerate(ids_of):
            await warm(backends, ids)
            runs: dict[str, Run] = {}
            # The target alone at both ends, the order alternating per prompt: drift hits every setup
            # alike, and the two alone runs of the same work show the noise floor.
            order = ["alone", *[s.name for s in setups], "alone again"]
            for name in order if i % 2 == 0 else order[::-1]:
                if name.startswith("alone"):
                    runs[name] = await (alone_scorer(target_scorer, ids, args.max_tokens) if args.mode == "cost-model"
                                        else alone_stream(backends["target"], ids, args.max_tokens))
                else:
                    setup = next(s for s in setups if s.name == name)
                    runs[name] = await speculative_run(setup.strategy, ids, args.max_tokens)
            again = runs.pop("alone again")
            noise.append(again.seconds / runs["alone"].seconds)
            runs["alone"].seconds = (runs["alone"].seconds + again.seconds) / 2  # the baseline: their mean
            alone.append(runs["alone"])
            for setup in setups:
                result = runs[setup.name]
                if args.mode == "remote":  # the target's stream is text: compared as text, ties scored remotely
                    result.agreement = await remote_agreement(backends["target"], draft_scorer, ids, result.text,
                                                              runs["alone"].text)
                else:
                    result.agreement = await agreement(target_scorer, ids, result.tokens, runs["alone"].tokens)
                setup.runs.append(result)
            print(f"prompt {i}: alone {runs['alone'].count} tokens {runs['alone'].seconds:.1f}s; "
                  + "; ".join(f"{s.name} {runs[s.name].seconds:.1f}s {_cell(runs[s.name].agreement)}"
                              for s in setups), flush=True)
        rows, notes = table(setups, alone, args.max_k)
        notes.insert(0, f"- noise floor: the target alone run twice per prompt (same work) took {min(noise):.2f}x to "
                        f"{max(noise):.2f}x as long the second time (median {float(np.median(noise)):.2f}x); the "
                        "baseline is the mean of the two")
        if args.mode == "cost-model" and isinstance(target_scorer, ModelledScorer):
            notes.append("- modelled target calls that took longer than their model (prefills, catch-ups): "
                         f"{target_scorer.overruns}")
        return "\n".join([*rows, "", *notes, "", note]).rstrip()
    finally:
        for backend in (target, draft, remote):
            if backend is not None:
                await backend.close()
        if server is not None:
            server.stop()


def _cell(value: Agreement | None) -> str:
    return value.cell() if value is not None else "-"


async def warm(backends: dict[str, Backend], ids: list[int]) -> None:
    """Every run starts from a cached prompt: prefill it once in every model first (a remote
    target twice: its generation's prefix cache, and the prompt scores its verifications reuse)."""
    for backend in backends.values():
        scorer = backend.token_scorer()
        if scorer is not None:
            await scorer.score_next_tokens(ids, len(ids))
            continue
        await alone_stream(backend, ids, 1)
        async for _ in backend.stream_completion(CompletionPrompt(token_ids=ids, prompt_logprobs=1),
                                                 SamplingParams(max_tokens=1, temperature=0.0)):
            pass


async def modelled_step(scorer: TokenScorer, draft: Backend, args: argparse.Namespace) -> tuple[float, str]:
    """The modelled decode step: long enough that the real verification of max_k drafts fits in
    its modelled time (the sleeps then set every cost)."""
    probe = [int(t) for t in (await scorer.tokenize("def f(x):\n    return x\n" * 8))]
    await scorer.score_next_tokens(probe, len(probe))
    real = []
    for repeat in range(2):
        junk = [(probe[-1] + 1 + repeat + 7 * i) % scorer.vocab_size for i in range(args.max_k + 1)]
        started = time.perf_counter()
        await scorer.score_next_tokens([*probe, *junk], len(probe) + 1)
        real.append(time.perf_counter() - started)
    step = 1.25 * min(real) / (1 + args.slope * args.max_k)
    modelled = step * (1 + args.slope * args.max_k)
    return step, (f"Cost model: decode step {step * 1000:.0f} ms, verify(k) = step x (1 + {args.slope} k) "
                  f"(verify(5)/decode(1) = {1 + 4 * args.slope:.2f}); the real verification of {args.max_k} "
                  f"drafts took {min(real) * 1000:.0f} ms, inside the modelled {modelled * 1000:.0f} ms.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["in-process", "cost-model", "remote"], default="in-process")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--task", choices=["complete", "edit"], default="complete",
                        help="complete: raw HumanEval prompts; edit: restate the reference solution (chat)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--max-k", type=int, default=8)
    parser.add_argument("--slope", type=float, default=0.1, help="cost-model: verify(k) = step * (1 + slope k)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    body = asyncio.run(run(args))
    minutes = (time.perf_counter() - started) / 60
    command = (f"`.venv/bin/python loadtests/bench_speculative.py --mode {args.mode} --task {args.task} "
               f"--prompts {args.prompts} "
               f"--max-tokens {args.max_tokens} --max-k {args.max_k} --threads {args.threads}"
               + (f" --slope {args.slope}" if args.mode == "cost-model" else "") + "`")
    title = {"in-process": "in-process (llama.cpp)", "cost-model": "cost model of a memory-bound target",
             "remote": "target behind a second gateway (remote verification)"}[args.mode]
    task = "HumanEval dev prompts" if args.task == "complete" else "HumanEval dev solutions restated (edit task)"
    markdown = (f"### Speculative decoding, {title}: Qwen2.5-Coder 1.5B target, {task}\n\n"
                f"{command} — {machine_line()}; threads {args.threads} per model; greedy; {args.prompts} prompts "
                f"x max {args.max_tokens} tokens; prompts cached before each run (decode only); load average at "
                f"start / end {load_start:.2f} / {os.getloadavg()[0]:.2f}; took {minutes:.1f} min.\n\n{body}\n")
    print(markdown)
    if args.write:
        write_section(f"speculative-{args.mode}" + ("" if args.task == "complete" else f"-{args.task}"), markdown)


if __name__ == "__main__":
    main()
