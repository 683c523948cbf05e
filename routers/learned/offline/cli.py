"""``slm-gateway router train|eval``: train a learned router, score it with RouteLLM's metrics.

``register(subparsers)`` adds the ``router`` command to the gateway CLI; ``python -m
routers.learned.offline.cli`` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from routers.learned.classifiers import CLASSIFIER_KINDS

DATA_HELP = "JSONL records: question, weak_correct, strong_correct (+ choices)"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    router = subparsers.add_parser("router", help="train / evaluate the learned pre-call router")
    commands = router.add_subparsers(dest="router_command", required=True)

    train = commands.add_parser("train", help="train a router from labelled records (JSONL)")
    train.add_argument("--data", type=Path, required=True, help=DATA_HELP)
    train.add_argument("--out", type=Path, required=True, help="router directory to write")
    train.add_argument(
        "--target", default="escalation=0.3",
        help="escalation=FRACTION (calibrate the threshold to send that share to strong) or threshold=SCORE",
    )
    train.add_argument("--model", choices=CLASSIFIER_KINDS, default="logreg", help="classifier")
    train.add_argument(
        "--label", choices=("strong_only", "weak_wrong"), default="strong_only",
        help="positive label: strong right and weak wrong (default), or weak wrong",
    )
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser("eval", help="APGR / CPT(50%%) / CPT(80%%) on labelled records")
    evaluate.add_argument("--router", type=Path, required=True, help="router directory")
    evaluate.add_argument("--data", type=Path, required=True, help=DATA_HELP)
    evaluate.add_argument("--plot", type=Path, help="write the quality-vs-strong-calls curve (PNG)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--bins", type=int, default=10, help="quantile bins of thresholds (RouteLLM: 10); 0: every score",
    )
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from routers.learned.offline.training import ThresholdTarget, train_from_file

    try:
        target = ThresholdTarget.parse(args.target)
        router = train_from_file(args.data, args.out, kind=args.model, target=target, label_rule=args.label)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    training = router.meta.training
    print(
        f"wrote {args.out}: {args.model} on {training['rows']} rows "
        f"(positive rate {training['positive_rate']:.3f}), threshold {router.threshold:.4f}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from routers.learned.offline.training import evaluate_file
    from routers.learned.router import LearnedRouter

    try:
        router = LearnedRouter.load(args.router)
        evaluation = evaluate_file(router, args.data, bins=args.bins or None, progress=not args.json)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        from routers.learned.offline.plot import plot_evaluation

        source = f"{args.data.parent.name}/{args.data.name}"
        plot_evaluation(evaluation, args.plot, title=f"{router.meta.classifier} router on {source}")
    result = evaluation.router.to_dict() | {
        "random": evaluation.random.to_dict(),
        "threshold": router.threshold,
        "escalation_at_threshold": evaluation.escalation_at_threshold,
        "accuracy_at_threshold": evaluation.accuracy_at_threshold,
        "curve": [
            {"strong_share": float(x), "accuracy": float(y)}
            for x, y in zip(evaluation.curve.strong_share, evaluation.curve.quality, strict=True)
        ],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    m, r = evaluation.router, evaluation.random
    print(f"n={m.n}  weak acc {m.weak_accuracy:.3f}  strong acc {m.strong_accuracy:.3f}")
    print(f"{'':8}{'APGR':>8}{'CPT50':>8}{'CPT80':>8}")
    print(f"{'router':8}{m.apgr:8.3f}{m.cpt50:8.1%}{m.cpt80:8.1%}")
    print(f"{'random':8}{r.apgr:8.3f}{r.cpt50:8.1%}{r.cpt80:8.1%}")
    print(
        f"stored threshold {router.threshold:.4f}: {evaluation.escalation_at_threshold:.1%} to strong, "
        f"accuracy {evaluation.accuracy_at_threshold:.3f}"
    )
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slm-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
