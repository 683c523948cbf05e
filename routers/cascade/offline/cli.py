"""``slm-gateway calibrate`` and ``slm-gateway eval`` for cascade models."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.runtime import PolicyRuntime
from policies.loader import PolicyError, check_policy, load_policy
from routers.cascade.config import CascadeStrategy
from routers.cascade.offline.answers import AnswerCache, answers_for
from routers.cascade.offline.calibration import CalibrationTarget, calibrate, reliability_bins
from routers.cascade.offline.evaluation import evaluation_metrics, run_evaluation, scorer_auroc_intervals
from routers.cascade.offline.labelled import TASKS, LabelledItem, load_labelled
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
        parser.add_argument("--task", choices=TASKS, default=None,
                            help="how records are prompted and graded (default: detected from the fields)")
        parser.add_argument("--cache", type=Path, default=None,
                            help="JSON file of each model's answers, reused across runs (greedy answers)")
        parser.add_argument("--holdout", type=float, default=None,
                            help="a seeded share of the records kept apart: calibrate fits on the rest, "
                                 "eval scores only these")
        parser.add_argument("--concurrency", type=int, default=8,
                            help="requests in flight per model (the local engine batches up to max_batch_size)")
        parser.add_argument("--plot", type=Path, default=None,
                            help="PNG to write (calibrate: reliability diagram, default MODEL-reliability.png; "
                                 "eval: quality-vs-escalation curve)")
        if name == "calibrate":
            parser.add_argument("--target", required=True, help="escalation=0.3 or accuracy=0.95")
            parser.add_argument("--write", action="store_true", help="write the result into the policy file")
        else:
            parser.add_argument("--json", action="store_true", help="print one JSON object")
            parser.add_argument("--cascade", choices=("live", "replay"), default="live",
                                help="live: run the cascade strategy; replay: from the two tiers' answers "
                                     "(exact for buffer mode without early exit or router stage)")
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
    items = split_items(load_labelled(args.data, args.limit, task=args.task), args.holdout)[0]
    cache = AnswerCache.open(args.cache)
    runtime = await PolicyRuntime.start(policy)
    try:
        answers = await answers_for(tier.backend, runtime.backends[tier.backend], items, args.concurrency, cache,
                                    f"{tier.backend} answering")
    finally:
        await runtime.close()
    # Malformed code escalates before any score is looked at: fit the map on the rest.
    scored = [a for a in answers if a.fails(tier.structural) is None]
    raw = [SCORERS[tier.scorer](a.logprobs) for a in scored]
    correct = [a.correct for a in scored]
    fitted = calibrate(raw, correct, target)
    calibration, threshold, calibrated = fitted.calibration, fitted.threshold, fitted.calibrated
    kept = "n/a" if fitted.kept_accuracy is None else f"{fitted.kept_accuracy:.3f}"
    accuracy = sum(a.correct for a in answers) / len(items)
    print(f"n={len(items)} {tier.backend} accuracy={accuracy:.3f} scorer={tier.scorer}")
    if len(scored) < len(answers):
        print(f"{len(answers) - len(scored)} answers fail the structural check (escalated at once; "
              f"{sum(a.correct for a in answers if a.fails(tier.structural) is not None)} of them were right)")
    aurocs = scorer_auroc_intervals(scored)
    print("AUROC by scorer (raw score vs correct, bootstrap 95 % interval):")
    for name, entry in aurocs.items():
        print(f"  {name:>22}: {entry['auroc']} {entry['ci95']}")
    print(signal_verdict(tier.scorer, aurocs))
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


def split_items(items: list[LabelledItem], holdout: float | None, seed: int = 0
                ) -> tuple[list[LabelledItem], list[LabelledItem]]:
    """(fit part, held-out part): a seeded share ``holdout`` kept apart, the same for both CLIs."""
    if holdout is None:
        return items, items
    if not 0.0 < holdout < 1.0:
        raise ValueError("--holdout is a share in (0, 1)")
    order = random.Random(seed).sample(range(len(items)), len(items))
    cut = round(len(items) * holdout)
    held = set(order[:cut])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def signal_verdict(scorer: str, aurocs: dict[str, dict[str, Any]]) -> str:
    """Plain words on whether the confidence carries any signal on this data."""
    rated = [(name, entry) for name, entry in aurocs.items() if entry["auroc"] is not None]
    if not rated:
        return "No signal can be measured: the answers are all right or all wrong."
    # A scorer with one value for every answer (e.g. a code scorer on one-letter answers) ranks
    # nothing: its AUROC is 0.5 on every resample. It is not the "best" of anything.
    rated = [(name, entry) for name, entry in rated if entry["ci95"] != [0.5, 0.5]] or rated
    best, entry = max(rated, key=lambda pair: pair[1]["auroc"])
    low, high = entry["ci95"] or (entry["auroc"], entry["auroc"])
    if low <= 0.5 <= high:
        return (f"NO SIGNAL: the best scorer ({best}, AUROC {entry['auroc']}, 95 % interval {low}-{high}) is "
                "not distinguishable from chance on this data. The small model's confidence does not tell its "
                "right answers from its wrong ones, so no threshold can keep quality while saving escalations: "
                "a cascade cannot help here (use the large model, or a pre-router on the request text).")
    note = "" if best == scorer else f" (the tier uses {scorer}: consider scorer: {best})"
    return f"Signal: best scorer {best}, AUROC {entry['auroc']}, 95 % interval {low}-{high}{note}."


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
    items = split_items(load_labelled(args.data, args.limit, task=args.task), args.holdout)[1]
    cache = AnswerCache.open(args.cache)
    runtime = await PolicyRuntime.start(policy)
    try:
        run = await run_evaluation(runtime, args.model, items, args.concurrency, cache=cache, mode=args.cascade)
    finally:
        await runtime.close()
    result, curve = evaluation_metrics(run, policy, args.model)
    if args.plot and curve is not None:
        plot_quality_curve(curve, (result["escalation_rate"], result["accuracy"]), args.plot,
                           title=f"{args.model}: quality vs share escalated")
    return result
