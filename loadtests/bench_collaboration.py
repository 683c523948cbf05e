"""The collaboration on code (issue 20): HumanEval dev with the Qwen2.5-Coder pair, every policy
from one generation per model.

    python -m loadtests.bench_collaboration --cache /tmp/collab/humaneval-answers.json \
        --figures docs/data/collaboration-humaneval-dev.json
    python -m loadtests.bench_collaboration --figures docs/data/collaboration-humaneval-dev.json

Each model's greedy answers (text, token logprobs, timings) come from the cache that
``slm-gateway eval --cache FILE`` writes (generated once, on the llama.cpp engine, one thread per
model). With ``--cache``, ``--figures FILE`` keeps what the analysis needs of them — per problem
and model: pass, structural failure, token counts, latency, and every scorer's value on the small
answer — in a small JSON file; without ``--cache`` the analysis runs from that file alone (the
answer caches live in /tmp and are lost with the machine). Everything else is computed from them:

* every scorer's AUROC on the small model's answers, with bootstrap 95 % intervals;
* honest calibration: the dev set is split in two halves with the CLIs' own ``--holdout 0.5``
  split; the scorer, the isotonic map and the threshold are chosen on one half and applied to
  the other, and again with the halves swapped (cross-fitting), so every problem is scored by a
  cascade that never saw it. The 64 held-out HumanEval problems are not available to us;
* the quality-vs-escalation curve, APGR, CPT and the escalation needed for 95 % of the large
  model's pass@1, with bootstrap intervals;
* the combined policies (rules pre-router, cascade, speculative large tier) in one table and
  one plot (pass@1 vs cost).

The speculative large tier gives the large model's greedy answer (tested token for token in
tests/test_speculative_qwen.py), so its pass@1 is the large model's; its latency is the large
model's divided by the speed-up measured by ``loadtests/bench_speculative.py`` (``--speedup``,
where it was measured in ``--speedup-source``; 1.0 when none was measured: then it is shown as no
faster). Its cost is the large model's tokens, as the gateway's accounting bills it.

``--data ../shared/data/mmlu/dev.jsonl --task mmlu`` runs the same analysis on MMLU answers (the
no-signal case, docs/collaboration.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.bench_report import machine_line, write_section
from policies.loader import load_policy
from routers.cascade.calibration import apply_calibration
from routers.cascade.config import CascadeStrategy, CascadeTier
from routers.cascade.offline.answers import AnswerCache, BackendAnswer, _decode
from routers.cascade.offline.calibration import fit_isotonic
from routers.cascade.offline.cli import split_items
from routers.cascade.offline.labelled import LabelledItem, load_labelled
from routers.cascade.offline.replay import STRUCTURAL_FAIL, bootstrap, curve_figures, scorer_auroc_ci, sweep
from routers.cascade.scorers import SCORERS

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "dev.jsonl"
POLICY = REPO / "policies" / "examples" / "code.yaml"
COMMAND = "python -m loadtests.bench_collaboration"
CODE_SCORERS = ("code_mean_logprob", "code_quantile_logprob", "code_confident_share", "mean_logprob",
                "quantile_logprob", "min_logprob", "mean_margin", "neg_entropy")


@dataclass(frozen=True, slots=True)
class Answered:
    """What the analysis reads of one model's answer (all the figures file keeps)."""

    correct: bool
    structure: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    examples: str | None = None  # why well-formed code fails the prompt's own examples

    @classmethod
    def of(cls, answer: BackendAnswer) -> Answered:
        return cls(answer.correct, answer.structure, answer.prompt_tokens, answer.completion_tokens,
                   round(answer.latency_s, 3), answer.examples)

    def fails(self, structural: str | None) -> bool:
        """Escalated by a tier with this ``structural`` check whatever its score."""
        if structural is None:  # the same rule as BackendAnswer.fails, on what this file keeps
            return False
        return bool(self.structure) or (structural == "python_examples" and bool(self.examples))


@dataclass(frozen=True, slots=True)
class Pair:
    item_id: str
    small: Answered
    large: Answered
    scores: dict[str, float]  # every scorer on the small model's answer


def pair_of(item: LabelledItem, small: BackendAnswer, large: BackendAnswer) -> Pair:
    scores = {name: round(float(scorer(small.logprobs)), 6) for name, scorer in SCORERS.items()}
    return Pair(item.id, Answered.of(small), Answered.of(large), scores)


def write_figures(path: Path, pairs: list[Pair], about: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": p.item_id, "small": asdict(p.small), "large": asdict(p.large), "scores": p.scores} for p in pairs]
    body = ",\n".join(json.dumps(row) for row in rows)  # one problem a line: diffs stay readable
    path.write_text(f'{{"version": 1, "about": {json.dumps(about)}, "pairs": [\n{body}\n]}}\n')


def read_figures(path: Path, items: list[LabelledItem]) -> list[Pair]:
    """The pairs of a figures file, in the order of ``items`` (the data file's)."""
    rows = {row["id"]: row for row in json.loads(path.read_text())["pairs"]}
    return [Pair(item.id, Answered(**rows[item.id]["small"]), Answered(**rows[item.id]["large"]),
                 rows[item.id]["scores"]) for item in items if item.id in rows]


def load_pairs(cache_paths: list[Path], policy_path: Path, items: list[LabelledItem]) -> list[Pair]:
    policy = load_policy(policy_path)
    config = policy.models["cascade"]
    assert isinstance(config, CascadeStrategy)
    cache = AnswerCache(None)
    for path in cache_paths:  # e.g. one file per model when the two were generated side by side
        cache.rows.update(AnswerCache.open(path).rows)

    names = {tier: Path(str(getattr(policy.backends[tier], "model", tier))).name.removesuffix(".gguf")
             for tier in ("small", "large")}
    pairs = []
    for item in items:
        keys = [AnswerCache.key(tier, names[tier], item) for tier in ("small", "large")]
        if all(k in cache.rows for k in keys):
            small, large = (_decode(cache.rows[k], item) for k in keys)
            pairs.append(pair_of(item, small, large))
    return pairs


def fit_tier(pairs: list[Pair], target_share: float, structural: str) -> tuple[CascadeTier, dict[str, Any]]:
    """On the fit half: the scorer with the highest AUROC, its isotonic map, and the lowest
    threshold at which the cascade reaches ``target_share`` of the large model's pass@1 there
    (answers failing the ``structural`` check escalate first and are not scored)."""
    formed = [p for p in pairs if not p.small.fails(structural)]
    correct = [p.small.correct for p in formed]
    aurocs = {name: scorer_auroc_ci([p.scores[name] for p in formed], correct, rounds=0)[0] or 0.5
              for name in CODE_SCORERS}
    best = max(aurocs, key=lambda n: aurocs[n])
    calibration = fit_isotonic([p.scores[best] for p in formed], correct)
    tier = CascadeTier(backend="small", scorer=best, threshold=0.0, calibration=calibration,
                       structural=structural)  # type: ignore[arg-type]
    calibrated = calibrated_scores(tier, pairs)
    large = np.mean([p.large.correct for p in pairs])
    threshold = float(calibrated.max()) + 1e-3
    for candidate in sorted(set(calibrated.tolist())):
        up = calibrated < candidate
        quality = np.mean([p.large.correct if u else p.small.correct for p, u in zip(pairs, up, strict=True)])
        if quality >= target_share * large:
            threshold = candidate
            break
    return tier.model_copy(update={"threshold": threshold}), {"scorer": best, "auroc": aurocs[best]}


def calibrated_scores(tier: CascadeTier, pairs: list[Pair]) -> np.ndarray:
    return np.array([STRUCTURAL_FAIL if p.small.fails(tier.structural) else apply_calibration(
        tier.calibration, p.scores[tier.scorer]) for p in pairs])


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    correct: np.ndarray  # per problem
    large_share: np.ndarray  # 1 where the large model answered
    cost: np.ndarray
    latency: np.ndarray


def price(policy: Any, backend: str, answer: Answered) -> float:
    return float(policy.backends[backend].price.cost(answer.prompt_tokens, answer.completion_tokens))


def outcomes(pairs: list[Pair], escalate: np.ndarray, direct: np.ndarray, policy: Any, speedup: float,
             prefix: str) -> list[Outcome]:
    """The policy family for given cascade decisions: ``direct`` = the pre-router sent the problem
    straight to the large tier (no small attempt); ``escalate`` = the cascade escalated it."""
    small_cost = np.array([price(policy, "small", p.small) for p in pairs])
    large_cost = np.array([price(policy, "large", p.large) for p in pairs])
    small_lat = np.array([p.small.latency_s for p in pairs])
    large_lat = np.array([p.large.latency_s for p in pairs])
    ok_s = np.array([p.small.correct for p in pairs])
    ok_l = np.array([p.large.correct for p in pairs])
    up = escalate | direct
    out = []
    for suffix, lat_large in (("", large_lat), (" + speculative large", large_lat / speedup)):
        tried = ~direct
        out.append(Outcome(prefix + suffix, np.where(up, ok_l, ok_s), up.astype(float),
                           np.where(tried, small_cost, 0) + np.where(up, large_cost, 0),
                           np.where(tried, small_lat, 0) + np.where(up, lat_large, 0)))
    return out


def cross_fit(pairs: list[Pair], items: list[LabelledItem], target: float, structural: str
              ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold decisions: each half decided by the tier fitted on the other half (``items``:
    the pairs' items in the same order, split as the CLIs' ``--holdout 0.5`` splits them)."""
    index = {p.item_id: i for i, p in enumerate(pairs)}
    escalate = np.zeros(len(pairs), bool)
    confidence = np.zeros(len(pairs))
    fits = []
    first, second = split_items(items, 0.5)
    for fit_items, held_items in ((first, second), (second, first)):
        fit_pairs = [pairs[index[i.id]] for i in fit_items]
        tier, info = fit_tier(fit_pairs, target, structural)
        held = [index[i.id] for i in held_items]
        scores = calibrated_scores(tier, [pairs[i] for i in held])
        assert tier.threshold is not None
        escalate[held] = scores < tier.threshold
        confidence[held] = scores
        fits.append({**info, "threshold": round(tier.threshold, 4), "fit_n": len(fit_pairs),
                     "fit_escalation": float(np.mean(calibrated_scores(tier, fit_pairs) < tier.threshold))})
    return escalate, confidence, fits


def bootstrap_outcome(o: Outcome, large_ok: np.ndarray, rounds: int = 1000) -> dict[str, list[float]]:
    rng = np.random.default_rng(1)
    acc, share = [], []
    for _ in range(rounds):
        i = rng.integers(0, len(o.correct), len(o.correct))
        acc.append(o.correct[i].mean())
        share.append(o.correct[i].mean() / max(large_ok[i].mean(), 1e-9))
    return {"pass1": np.percentile(acc, [2.5, 97.5]).round(3).tolist(),
            "share_of_large": np.percentile(share, [2.5, 97.5]).round(3).tolist()}


def plot(results: list[Outcome], sweep_cost: np.ndarray, sweep_quality: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(sweep_cost, sweep_quality, color="grey",
            label=f"cascade threshold sweep (out-of-fold scores, n={len(results[0].correct)})")
    for o in results:
        ax.scatter([o.cost.sum()], [o.correct.mean()], label=o.name, zorder=3,
                   marker="x" if "speculative" in o.name else "o")
    ax.set(xlabel="cost of the problems (notional USD, code.yaml prices)", ylabel="pass@1", title=title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot: never over the curve
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def policy_table(pairs: list[Pair], escalate: np.ndarray, policy: Any, args: argparse.Namespace) -> list[Outcome]:
    """Every policy of the combined table, from the same per-problem answers."""
    n = len(pairs)
    prompt_tokens = np.array([p.small.prompt_tokens for p in pairs])
    direct = prompt_tokens >= args.rule_tokens if args.rule_tokens else np.zeros(n, bool)
    none = np.zeros(n, bool)
    results = [*outcomes(pairs, none, none, policy, args.speedup, "always small")[:1],
               *outcomes(pairs, none, ~none, policy, args.speedup, "always large"),  # no small attempt
               *outcomes(pairs, np.array([p.small.fails("python") for p in pairs]), none, policy, args.speedup,
                         "structural check only"),
               *outcomes(pairs, np.array([p.small.fails("python_examples") for p in pairs]), none, policy,
                         args.speedup, "structural + examples check only"),
               *outcomes(pairs, escalate, none, policy, args.speedup, "cascade (cross-fitted)")]
    if args.rule_tokens:
        results += outcomes(pairs, escalate & ~direct, direct, policy, args.speedup,
                            f"rules (prompt >= {args.rule_tokens} tokens -> large) + cascade")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, nargs="*", default=[], help="answer caches (merged)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="compact per-problem figures: written from --cache, else read instead of it")
    parser.add_argument("--data", type=Path, default=HUMANEVAL)
    parser.add_argument("--task", default="humaneval")
    parser.add_argument("--policy", type=Path, default=POLICY)
    parser.add_argument("--target", type=float, default=0.95, help="share of the large model's pass@1 to reach")
    parser.add_argument("--speedup", type=float, default=1.0, help="speculative speed-up of the large tier")
    parser.add_argument("--speedup-source", default="not measured", help="where --speedup was measured (doc)")
    parser.add_argument("--rule-tokens", type=int, default=None,
                        help="rules pre-router: prompts of at least this many tokens go straight to large")
    parser.add_argument("--generation", default="", help="how the cache was made (command, time, load) for the doc")
    parser.add_argument("--plot", type=Path, default=None, help="default docs/img/collaboration-TASK.png")
    parser.add_argument("--write", action="store_true", help="write the docs/benchmarks.md section")
    parser.add_argument("--structural", choices=["python", "python_examples"], default=None,
                        help="the cascade's structural check (default: the policy's cascade's first tier)")
    args = parser.parse_args()
    if not args.cache and args.figures is None:
        parser.error("give --cache (answer caches) or --figures (a figures file written from them)")
    started = time.perf_counter()
    policy = load_policy(args.policy)
    if args.structural is None:
        shipped = policy.models["cascade"]
        assert isinstance(shipped, CascadeStrategy)
        args.structural = shipped.tiers[0].structural or "python"
    items = load_labelled(args.data, task=args.task)
    if args.cache:
        pairs = load_pairs(args.cache, args.policy, items)
        if args.figures is not None:
            write_figures(args.figures, pairs, f"{args.task} {args.data.name}: {args.generation}")
    else:
        pairs = read_figures(args.figures, items)
    paired = {p.item_id for p in pairs}
    items = [item for item in items if item.id in paired]
    n = len(pairs)
    ok_s = np.array([p.small.correct for p in pairs])
    ok_l = np.array([p.large.correct for p in pairs])
    source = f"--cache {' '.join(map(str, args.cache))}" if args.cache else f"--figures {args.figures}"
    data = args.data.resolve()
    shown = f"../{data.relative_to(REPO.parent)}" if data.is_relative_to(REPO.parent) else str(args.data)
    command = (f"{COMMAND} {source} --data {shown} --task {args.task} --speedup {args.speedup}"
               + (f" --rule-tokens {args.rule_tokens}" if args.rule_tokens else ""))
    lines = [f"`{command}` — {machine_line()}; load average {os.getloadavg()[0]:.1f} at analysis. {args.generation}",
             "", f"n = {n} {args.task} dev items with both answers; small pass@1 {ok_s.mean():.3f}, large "
             f"{ok_l.mean():.3f}; malformed code (structural check): small "
             f"{sum(bool(p.small.structure) for p in pairs)}, large {sum(bool(p.large.structure) for p in pairs)}; "
             f"well-formed code failing the prompt's examples: small {sum(bool(p.small.examples) for p in pairs)} "
             f"({sum(p.small.correct for p in pairs if p.small.examples)} of them right), large "
             f"{sum(bool(p.large.examples) for p in pairs)}; cascade structural check: `{args.structural}`.", "",
             "| scorer (small answers, well-formed only) | AUROC | bootstrap 95 % |", "|---|---|---|"]
    formed = [p for p in pairs if not p.small.fails(args.structural)]
    for name in CODE_SCORERS:
        auroc, ci = scorer_auroc_ci([p.scores[name] for p in formed], [p.small.correct for p in formed])
        lines.append(f"| {name} | {auroc} | {ci} |")
    escalate, confidence, fits = cross_fit(pairs, items, args.target, args.structural)
    order = confidence  # out-of-fold calibrated scores; malformed code first
    figures = curve_figures(order, ok_s, ok_l)
    lines += ["", f"Cross-fitted (2 halves, `--holdout 0.5` split): fits {fits}.",
              f"Out-of-fold threshold sweep: APGR {figures['apgr']}, CPT50/80/95 {figures['cpt50']} / "
              f"{figures['cpt80']} / {figures['cpt95']}, escalation for 95 % of the large pass@1 "
              f"{figures['escalation_for_95pct_large']}."]

    def stat(i: np.ndarray) -> dict[str, float | None]:
        return curve_figures(order[i], ok_s[i], ok_l[i])

    lines.append(f"Bootstrap 95 % intervals of the curve figures: {bootstrap(stat, n)}.")
    results = policy_table(pairs, escalate, policy, args)
    lines += ["", f"Speculative large tier: speed-up {args.speedup}x over the large model alone "
              f"({args.speedup_source}); same greedy answer, so the large model's pass@1 and billed tokens.",
              "", "| policy | pass@1 [95 %] | share of large pass@1 [95 %] | large answered | cost (notional USD) "
              "| cost / always-large | mean latency (s) |", "|---|---|---|---|---|---|---|"]
    large_cost = results[1].cost.sum()
    for o in results:
        interval = bootstrap_outcome(o, ok_l)
        lines.append(f"| {o.name} | {o.correct.mean():.3f} {interval['pass1']} | {o.correct.mean() / ok_l.mean():.3f} "
                     f"{interval['share_of_large']} | {o.large_share.mean():.2f} | {o.cost.sum():.5f} | "
                     f"{o.cost.sum() / large_cost:.2f} | {o.latency.mean():.1f} |")
    _share, quality = sweep(order, ok_s, ok_l)
    small_cost = results[0].cost
    large_each = np.array([price(policy, "large", p.large) for p in pairs])
    ranked = np.argsort(order, kind="stable")
    sweep_cost = small_cost.sum() + np.concatenate([[0.0], np.cumsum(large_each[ranked])])
    plot_path = args.plot or REPO / "docs" / "img" / f"collaboration-{args.task}.png"
    plot(results, sweep_cost, quality, plot_path, f"{args.task} dev: Qwen2.5-Coder 0.5B / 1.5B policies")
    lines += ["", f"Plot: `{plot_path.relative_to(REPO) if plot_path.is_relative_to(REPO) else plot_path}`. "
              f"Analysis took {time.perf_counter() - started:.0f} s (no model runs: everything is replayed from "
              "the answers)."]
    heading = ("Collaboration on code: HumanEval dev" if args.task == "humaneval"
               else f"Collaboration, the no-signal case: {args.task} dev")
    text = f"## {heading}, Qwen2.5-Coder 0.5B -> 1.5B (issue 20)\n\n" + "\n".join(lines)
    print(text)
    if args.write:
        write_section("collaboration" if args.task == "humaneval" else f"collaboration-{args.task}", text)


if __name__ == "__main__":
    main()
