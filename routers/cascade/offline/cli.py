"""``slm-gateway calibrate`` and ``slm-gateway eval`` for cascade models."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from gateway.runtime import PolicyRuntime
from policies.loader import PolicyError, check_policy, load_policy
from routers.cascade.config import CascadeStrategy
from routers.cascade.offline.calibration import CalibrationTarget, calibrate, reliability_bins
from routers.cascade.offline.evaluation import (
    ask_backend,
    evaluation_metrics,
    gather_bounded,
    run_evaluation,
    scorer_auroc,
)
from routers.cascade.offline.labelled import load_labelled
from routers.cascade.offline.plots import plot_quality_curve, plot_reliability
from routers.cascade.scorers import SCORERS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, func, help_text in (
        ("calibrate", cmd_calibrate, "fit a cascade tier's confidence map and threshold on labelled data"),
        ("eval", cmd_eval, "accuracy, escalation, cost and the quality-vs-escalation curve of a cascade"),
    ):
        parser = subparsers.add_parser(name, help=help_text)
        parser.add_argument("--policy", required=True)
        parser.add_argument("--model", required=True, help="a public model of type cascade")
        parser.add_argument("--data", required=True, type=Path, help="JSONL (e.g. ../shared/data/mmlu/dev.jsonl)")
        parser.add_argument("--limit", type=int, default=None, help="a seeded random sample of N records")
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("--plot", type=Path, default=None,
                            help="PNG to write (calibrate: reliability diagram, default MODEL-reliability.png; "
                                 "eval: quality-vs-escalation curve)")
        if name == "calibrate":
            parser.add_argument("--target", required=True, help="escalation=0.3 or accuracy=0.95")
            parser.add_argument("--write", action="store_true", help="write the result into the policy file")
        else:
            parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.set_defaults(func=func)


def _cascade(policy_path: str, model: str) -> tuple[Any, CascadeStrategy]:
    policy = load_policy(policy_path)
    config = policy.models.get(model)
    if not isinstance(config, CascadeStrategy):
        raise PolicyError(policy_path, [f"models.{model}: not a cascade model"])
    return policy, config


def cmd_calibrate(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_calibrate(args))
    except (PolicyError, ValueError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 1


async def _calibrate(args: argparse.Namespace) -> int:
    target = CalibrationTarget.parse(args.target)
    policy, config = _cascade(args.policy, args.model)
    tier = config.tiers[0]
    items = load_labelled(args.data, args.limit)
    runtime = await PolicyRuntime.start(policy)
    try:
        backend = runtime.backends[tier.backend]
        answers = await gather_bounded([partial(ask_backend, backend, i) for i in items], args.concurrency,
                                       f"{tier.backend} answering")
    finally:
        await runtime.close()
    raw = [SCORERS[tier.scorer](a.logprobs) for a in answers]
    correct = [a.correct for a in answers]
    fitted = calibrate(raw, correct, target)
    calibration, threshold, calibrated = fitted.calibration, fitted.threshold, fitted.calibrated
    kept = "n/a" if fitted.kept_accuracy is None else f"{fitted.kept_accuracy:.3f}"
    print(f"n={len(items)} {tier.backend} accuracy={sum(correct) / len(items):.3f} scorer={tier.scorer}")
    print(f"AUROC by scorer (raw score vs correct): {scorer_auroc(answers)}")
    print(f"threshold={threshold:.4f} (P(correct)) escalates {fitted.escalation:.1%}; kept answers correct {kept}")
    # Round down: a rounded-up threshold would escalate the answer sitting exactly on it.
    update = {"threshold": math.floor(threshold * 1e6) / 1e6, "calibration": calibration.model_dump()}
    print(yaml.safe_dump({"models": {args.model: {"tiers": [{"backend": tier.backend, **update}]}}}, sort_keys=False))
    plot = args.plot or Path(f"{args.model}-reliability.png")
    plot_reliability(reliability_bins(calibrated, correct), plot, title=f"{args.model}: {tier.scorer}")
    print(f"reliability diagram: {plot}")
    if args.write:
        document = yaml.safe_load(Path(args.policy).read_text())
        document["models"][args.model]["tiers"][0].update(update)
        Path(args.policy).write_text(yaml.safe_dump(document, sort_keys=False))
        problems = check_policy(args.policy)
        print(f"wrote {args.policy}" + (f" — but it no longer validates: {problems}" if problems else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_evaluate(args))
    except (PolicyError, ValueError) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


async def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    policy, _config = _cascade(args.policy, args.model)
    items = load_labelled(args.data, args.limit)
    runtime = await PolicyRuntime.start(policy)
    try:
        run = await run_evaluation(runtime, args.model, items, args.concurrency)
    finally:
        await runtime.close()
    result, curve = evaluation_metrics(run, policy, args.model)
    if args.plot and curve is not None:
        plot_quality_curve(curve, (result["escalation_rate"], result["accuracy"]), args.plot,
                           title=f"{args.model}: quality vs share escalated")
    return result
