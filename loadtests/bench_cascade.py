"""Cascade on real models: Qwen2.5-Coder-0.5B-Instruct (in-process) -> 1.5B-Instruct (a second
gateway process, an OpenAI-compatible "cloud" over HTTP), on MMLU dev.

    .venv/bin/python -m loadtests.bench_cascade --calib 120 --eval 120 --ttft 20

1. A seeded sample of MMLU dev is split into a calibration part and a disjoint evaluation part.
2. Calibration: the small model answers the calibration part; each scorer's AUROC is printed;
   the chosen scorer's isotonic map and threshold are fitted for ``--target``.
3. Evaluation (the gateway's own code: PolicyRuntime backends, the cascade strategy's ``chat``
   with a real RequestContext, the accounting finaliser): small alone, large alone, cascade.
4. TTFT, one request at a time, streamed: small alone vs the ``handoff`` cascade.
Writes section "cascade" of docs/benchmarks.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.runtime import PolicyRuntime
from loadtests.bench_report import machine_line, write_section
from loadtests.processes import ServerProcess, free_port
from policies.loader import load_policy
from routers.cascade.offline.calibration import CalibrationTarget, calibrate
from routers.cascade.offline.evaluation import (
    BackendAnswer,
    ask_backend,
    ask_cascade,
    evaluation_metrics,
    gather_bounded,
    run_evaluation,
    scorer_auroc,
)
from routers.cascade.offline.labelled import load_labelled
from routers.cascade.scorers import SCORERS

REPO = Path(__file__).resolve().parent.parent
MMLU = REPO.parent / "shared" / "data" / "mmlu" / "dev.jsonl"
FETCH = REPO.parent / "shared" / "models" / "fetch-qwen-pair"
COMMAND = "python -m loadtests.bench_cascade"
LLM_PRICE = {"input_per_1m": 2.50, "output_per_1m": 10.00}  # priced like a hosted frontier model
SLOW_TIMEOUTS = {"connect": 5.0, "first_token": 600.0, "total": 900.0, "idle": 600.0}  # 2 shared CPU cores


def qwen_pair() -> tuple[str, str]:
    done = subprocess.run([str(FETCH)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHON": sys.executable})
    small, large = done.stdout.split()[-2:]
    return small, large


def cloud_policy(large: str) -> dict[str, Any]:
    return {"version": 1, "backends": {"llm": {"type": "local", "model": large, "served_name": "qwen-1.5b",
                                               "max_batch_size": 8, "timeouts": SLOW_TIMEOUTS}},
            "models": {"llm": {"type": "static", "backend": "llm"}}}


def cascade_policy(small: str, cloud_url: str, tier: dict[str, Any], token_floor: float) -> dict[str, Any]:
    handoff_tier = {"backend": "slm", "scorer": tier["scorer"], "threshold": -1e9,
                    "early_exit": {"window": 1, "floor": -1e9, "token_floor": token_floor}}
    return {
        "version": 1,
        "gateway": {"reference_llm": "llm"},
        "backends": {
            "slm": {"type": "local", "model": small, "served_name": Path(small).stem, "max_batch_size": 8,
                    "timeouts": SLOW_TIMEOUTS},
            "llm": {"type": "openai", "base_url": f"{cloud_url}/v1", "model": "llm", "price": LLM_PRICE,
                    "supports_prefix_continuation": True, "timeouts": SLOW_TIMEOUTS, "retry": {"max_attempts": 1}},
        },
        "models": {
            "cascade": {"type": "cascade", "mode": "buffer", "tiers": [tier, {"backend": "llm"}]},
            "handoff": {"type": "cascade", "mode": "handoff", "tiers": [handoff_tier, {"backend": "llm"}]},
        },
    }


async def start_runtime(policy: dict[str, Any], workdir: Path, reuse: PolicyRuntime | None = None) -> PolicyRuntime:
    path = workdir / "cascade.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return await PolicyRuntime.start(load_policy(path), reuse=reuse)


@dataclass
class TtftResult:
    small: list[float]
    handoff: list[float]
    handed: list[bool]  # per question: did the hand-off cascade pass it to the large model
    handoff_accuracy: float

    def kept_ratio(self) -> float | None:
        """Mean TTFT ratio over the questions the small model kept (no hand-off)."""
        pairs = [(s, h) for s, h, e in zip(self.small, self.handoff, self.handed, strict=True) if not e]
        return float(np.mean([h for _, h in pairs]) / np.mean([s for s, _ in pairs])) if pairs else None


async def measure_ttft(runtime: PolicyRuntime, items: list[Any]) -> TtftResult:
    """One request at a time, so TTFT is the model's, not a queue's."""
    small, handoff, handed, correct = [], [], [], 0
    for item in items:
        alone = await ask_backend(runtime.backends["slm"], item)
        cascaded = await ask_cascade(runtime, "handoff", item, stream=True)
        if alone.ttft_s is not None and cascaded.ttft_s is not None:
            small.append(alone.ttft_s)
            handoff.append(cascaded.ttft_s)
            handed.append(cascaded.escalated)
        correct += cascaded.correct
    return TtftResult(small, handoff, handed, correct / max(1, len(items)))


def best_scorer(auroc: dict[str, float | None]) -> str:
    """The scorer that best separates right from wrong small answers on the calibration set."""
    ranked = [(value, name) for name, value in auroc.items() if value is not None]
    return max(ranked)[1] if ranked else "first_token_margin"


def _pair_flags(args: argparse.Namespace) -> str:
    flags = f" --small {args.small}" if args.small else ""
    flags += f" --large {args.large}" if args.large else ""
    return flags + (f" --section {args.section}" if args.section != "cascade" else "")


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(args: argparse.Namespace, calib: dict[str, Any], result: dict[str, Any], ttft: TtftResult | None,
           elapsed: float) -> str:
    large_acc, acc = result["large_accuracy"], result["accuracy"]
    share = f"{acc / large_acc:.1%}" if large_acc else "n/a"
    lines = [
        f"## Cascade: {args.small_name} (in-process) -> {args.large_name} (second gateway over HTTP), MMLU dev",
        "",
        f"`{COMMAND}{_pair_flags(args)} --calib {args.calib} --eval {args.eval} --ttft {args.ttft} "
        f"--scorer {args.requested_scorer} "
        f"--target {args.target} --concurrency {args.concurrency}` — {machine_line()}; load average at start / "
        f"end {args.load_at_start:.1f} / {os.getloadavg()[0]:.1f}; took {elapsed / 60:.0f} min.",
        "",
        f"Calibration on {calib['n']} questions (disjoint from evaluation): small accuracy "
        f"{calib['small_accuracy']:.3f}; scorer `{args.scorer}`"
        f"{' (highest AUROC there)' if args.requested_scorer == 'best' else ''}, isotonic-calibrated; threshold "
        f"P(correct) ≥ {calib['threshold']:.3f} "
        f"escalated {calib['escalation']:.1%} there. Scorer AUROC (right vs wrong small answers): "
        + ", ".join(f"{k} {fmt(v)}" for k, v in calib["auroc"].items()) + ".",
        "",
        f"Evaluation on {result['n']} other questions, greedy, max_tokens 8, concurrency {args.concurrency}:",
        "",
        "| | accuracy | share escalated | LLM cost (USD) | mean latency (s) |",
        "|---|---|---|---|---|",
        f"| small alone | {result['small_accuracy']:.3f} | 0 | 0 "
        f"| {fmt(result['small_latency_s']['mean'], 2)} |",
        f"| large alone | {large_acc:.3f} | 1 | {result['large_alone_cost_usd']:.5f} "
        f"| {fmt(result['large_latency_s']['mean'], 2)} |",
        f"| cascade (buffer) | {acc:.3f} | {result['escalation_rate']:.3f} | {result['cost_usd']:.5f} "
        f"| {fmt(result['latency_s']['mean'], 2)} |",
        "",
        f"Cascade reaches {share} of the large model's accuracy with {result['escalation_rate']:.1%} escalated. "
        f"Threshold sweep over the small model's confidence: APGR {fmt(result['apgr'])}; share escalated for "
        f"50 / 80 / 95 % of the gap: {fmt(result['cpt50'], 2)} / {fmt(result['cpt80'], 2)} / "
        f"{fmt(result['cpt95'], 2)}. Cost: LLM priced at $2.50 / $10 per 1M tokens, the in-process model free.",
    ]
    if ttft is not None and ttft.small:
        ratio = float(np.mean(ttft.handoff) / np.mean(ttft.small))
        lines += [
            "",
            f"TTFT, streamed, one request at a time, {len(ttft.small)} questions: small alone mean "
            f"{np.mean(ttft.small) * 1000:.0f} ms (p50 {np.median(ttft.small) * 1000:.0f}), `handoff` cascade mean "
            f"{np.mean(ttft.handoff) * 1000:.0f} ms (p50 {np.median(ttft.handoff) * 1000:.0f}), ratio {ratio:.2f} "
            f"(p50 ratio {np.median(ttft.handoff) / np.median(ttft.small):.2f}); {sum(ttft.handed)} of them handed "
            f"off, accuracy {ttft.handoff_accuracy:.3f}. Over the questions the small model kept, the TTFT ratio "
            f"is {fmt(ttft.kept_ratio(), 2)}; a question handed off at its first token waits for the large "
            "model's first token as well.",
        ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    args.load_at_start = os.getloadavg()[0]
    if args.small and args.large:
        small_path, large_path = args.small, args.large
    else:
        pair = qwen_pair()
        small_path, large_path = args.small or pair[0], args.large or pair[1]
    args.small_name, args.large_name = Path(small_path).name, Path(large_path).name
    items = load_labelled(MMLU, args.calib + args.eval, seed=args.seed)
    calib_items, eval_items = items[:args.calib], items[args.calib:]
    workdir = Path(tempfile.mkdtemp(prefix="bench-cascade-"))
    cloud_port = free_port()
    cloud_yaml = workdir / "cloud.yaml"
    cloud_yaml.write_text(yaml.safe_dump(cloud_policy(large_path)))
    cloud = ServerProcess("cloud", [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(cloud_yaml),
                                    "--host", "127.0.0.1", "--port", str(cloud_port)],
                          base_url=f"http://127.0.0.1:{cloud_port}", ready_path="/ready",
                          log_path=workdir / "cloud.log", env={"SLM_GATEWAY_DATA_DIR": str(workdir / "cloud-data")},
                          cwd=REPO)
    with cloud.start(timeout=600):
        args.requested_scorer = args.scorer
        scorer = "first_token_margin" if args.scorer == "best" else args.scorer  # until calibration picks
        placeholder = {"backend": "slm", "scorer": scorer, "threshold": 0.0}
        runtime = await start_runtime(cascade_policy(small_path, cloud.base_url, placeholder, -1e9), workdir)
        try:
            answers: list[BackendAnswer] = await gather_bounded(
                [partial(ask_backend, runtime.backends["slm"], i) for i in calib_items], args.concurrency,
                "calibration (small)")
            auroc = scorer_auroc(answers)
            if args.scorer == "best":  # chosen on calibration data only; evaluation stays held out
                args.scorer = placeholder["scorer"] = best_scorer(auroc)
            raw = [SCORERS[args.scorer](a.logprobs) for a in answers]
            correct = [a.correct for a in answers]
            fitted = calibrate(raw, correct, CalibrationTarget.parse(args.target))
            # Hand-off switches on the running check: a first-token floor at the same escalation share.
            floor = float(np.quantile([SCORERS["min_logprob"](a.logprobs) for a in answers], fitted.escalation))
            tier = {**placeholder, "threshold": fitted.threshold, "calibration": fitted.calibration.model_dump()}
            calibrated = await start_runtime(cascade_policy(small_path, cloud.base_url, tier, floor), workdir,
                                             reuse=runtime)
            run = await run_evaluation(calibrated, "cascade", eval_items, args.concurrency)
            result, _curve = evaluation_metrics(run, calibrated.policy, "cascade")
            ttft = await measure_ttft(calibrated, eval_items[:args.ttft]) if args.ttft else None
            await calibrated.close()
            await runtime.close(keep=calibrated)
        except BaseException:
            await runtime.close()
            raise
    calib = {"n": len(calib_items), "small_accuracy": sum(correct) / len(correct), "threshold": fitted.threshold,
             "escalation": fitted.escalation, "auroc": auroc}
    markdown = report(args, calib, result, ttft, time.perf_counter() - started)
    print(markdown)
    if not args.no_write:
        write_section(args.section, markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=120, help="calibration questions")
    parser.add_argument("--eval", type=int, default=120, help="evaluation questions (disjoint)")
    parser.add_argument("--ttft", type=int, default=20, help="questions for the TTFT comparison (0: skip)")
    parser.add_argument("--scorer", default="best", choices=["best", *sorted(SCORERS)],
                        help="confidence scorer; best: highest AUROC on the calibration questions")
    parser.add_argument("--target", default="escalation=0.4")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--section", default="cascade",
                        help="section of docs/benchmarks.md to write (one per model pair keeps both)")
    parser.add_argument("--small", help="override the small model, e.g. smollm2 (default: the Qwen pair's 0.5B)")
    parser.add_argument("--large", help="override the large model (default: the Qwen pair's 1.5B)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
