"""Honest evaluation of the learned router on the shared dev data (RouteLLM's metrics).

MMLU: cross-subject folds (every fold holds out whole subjects; the router never sees a row,
nor a subject, it is scored on). GSM8K: shuffled k-fold. For each candidate classifier it
prints APGR / CPT(50%) / CPT(80%) averaged over the held-out folds next to the random router
on the same folds, measures per-request router latency on CPU, and writes the
"learned-router" section of docs/benchmarks.md.

    .venv/bin/python -m loadtests.bench_router [--folds 5] [--no-write]

Embeddings are cached under ~/.cache/slm-gateway/embeddings (first run: minutes of CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtests.bench_report import machine_line, write_section
from routers.learned.classifiers import ClassifierKind, fit_classifier
from routers.learned.embedder import Embedder
from routers.learned.offline.data import LabelledSet, LabelRule, load_labelled
from routers.learned.offline.embedding_cache import embed_cached
from routers.learned.offline.metrics import RouterMetrics, random_router_metrics, router_metrics

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # ../shared next to the repo
Index = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: ClassifierKind
    label: LabelRule = "strong_only"
    params: tuple[tuple[str, Any], ...] = ()


CANDIDATES = (
    Candidate("logreg C=1", "logreg", params=(("c", 1.0),)),
    Candidate("logreg C=0.1", "logreg", params=(("c", 0.1),)),
    Candidate("logreg C=1, label weak_wrong", "logreg", label="weak_wrong", params=(("c", 1.0),)),
    Candidate("kNN k=50", "knn", params=(("k", 50),)),
    Candidate("kNN k=100", "knn", params=(("k", 100),)),
    Candidate("MLP 64 hidden", "mlp", params=(("hidden", 64),)),
)


def subject_folds(data: LabelledSet, folds: int, seed: int = 0) -> Iterator[tuple[Index, Index]]:
    subjects = sorted(set(data.groups))
    np.random.default_rng(seed).shuffle(subjects)
    groups = np.array(data.groups)
    for held_subjects in np.array_split(np.array(subjects), folds):
        held = np.isin(groups, held_subjects)
        yield np.flatnonzero(~held), np.flatnonzero(held)


def row_folds(data: LabelledSet, folds: int, seed: int = 0) -> Iterator[tuple[Index, Index]]:
    order = np.random.default_rng(seed).permutation(len(data))
    for held in np.array_split(order, folds):
        yield np.setdiff1d(order, held), np.sort(held)


def mean_metrics(runs: list[RouterMetrics]) -> dict[str, float]:
    return {key: statistics.fmean(getattr(r, key) for r in runs) for key in ("apgr", "cpt50", "cpt80")} | {
        "apgr_sd": statistics.pstdev(r.apgr for r in runs)
    }


def evaluate(
    data: LabelledSet, vectors: npt.NDArray[np.float32], folds: list[tuple[Index, Index]], candidate: Candidate,
) -> dict[str, float]:
    runs = []
    for train, held in folds:
        model = fit_classifier(
            candidate.kind, vectors[train], data.labels(candidate.label)[train], **dict(candidate.params),
        )
        runs.append(router_metrics(model.predict(vectors[held]), data.weak_correct[held],
                                   data.strong_correct[held])[0])
    return mean_metrics(runs)


def length_baseline(data: LabelledSet, folds: list[tuple[Index, Index]]) -> dict[str, float]:
    """No learning: longer prompts go to the strong model first (a heuristic to beat)."""
    length = np.log([len(text) for text in data.texts])
    return mean_metrics([
        router_metrics(length[h], data.weak_correct[h], data.strong_correct[h])[0] for _, h in folds
    ])


def random_baseline(data: LabelledSet, folds: list[tuple[Index, Index]]) -> dict[str, float]:
    return mean_metrics([random_router_metrics(data.weak_correct[h], data.strong_correct[h]) for _, h in folds])


def router_latency_ms(texts: list[str], vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_],
                      requests: int = 200) -> dict[str, float]:
    """Per-request cost, one request at a time: embedding (dominant) and each classifier."""
    embedder = Embedder()
    embedder.embed(texts[:4])  # warm-up
    sample = texts[:: max(1, len(texts) // requests)][:requests]
    timings = []
    for text in sample:
        started = time.perf_counter()
        embedder.embed([text])
        timings.append((time.perf_counter() - started) * 1000)
    out = {"embed_p50": statistics.median(timings), "embed_p95": float(np.percentile(timings, 95))}
    for kind, params in (("logreg", {}), ("knn", {"k": 50}), ("mlp", {})):
        model = fit_classifier(kind, vectors, labels, **params)  # type: ignore[arg-type]
        started = time.perf_counter()
        for row in vectors[:requests]:
            model.predict(row[None, :])
        out[f"{kind}_ms"] = (time.perf_counter() - started) * 1000 / requests
    return out


def run(folds_n: int) -> tuple[str, list[str]]:
    lines: list[str] = []
    table = ["| benchmark | router | APGR (± sd over folds) | CPT(50%) | CPT(80%) |", "|---|---|---|---|---|"]
    latency: dict[str, float] = {}
    settings = (
        ("mmlu", subject_folds, "cross-subject"),
        ("gsm8k", row_folds, "k-fold"),
        # Reference only: rows of every subject on both sides, so the router can learn which
        # subjects the weak model is bad at. Optimistic for traffic from unseen topics.
        ("mmlu", row_folds, "k-fold, subjects shared"),
    )
    for name, make_folds, split in settings:
        data = load_labelled(DATA / name / "dev.jsonl")
        vectors = embed_cached(data.texts)
        folds = list(make_folds(data, folds_n))
        label_rate = float(data.labels().mean())
        lines.append(f"{name}: {len(data)} rows, {folds_n} {split} folds, weak {data.weak_correct.mean():.3f}, "
                     f"strong {data.strong_correct.mean():.3f}, strong-only-correct {label_rate:.3f}")
        results = [("random", random_baseline(data, folds)), ("prompt length (no learning)",
                                                             length_baseline(data, folds))]
        for candidate in CANDIDATES:
            started = time.perf_counter()
            results.append((candidate.name, evaluate(data, vectors, folds, candidate)))
            lines.append(f"  {candidate.name}: {time.perf_counter() - started:.1f} s for {folds_n} folds")
        for router, m in results:
            row = f"| {name} ({split}) | {router} | {m['apgr']:.3f} ± {m['apgr_sd']:.3f} | " \
                  f"{m['cpt50']:.1%} | {m['cpt80']:.1%} |"
            table.append(row)
        if not latency:
            latency = router_latency_ms(data.texts, vectors, data.labels())
            latency["points"] = len(vectors)
    latency_line = (
        f"Router latency per request (CPU, one request at a time): embedding p50 {latency['embed_p50']:.1f} ms, "
        f"p95 {latency['embed_p95']:.1f} ms; classifier logreg {latency['logreg_ms']:.3f} ms, "
        f"kNN(k=50, {latency['points']:.0f} points) {latency['knn_ms']:.3f} ms, MLP {latency['mlp_ms']:.3f} ms."
    )
    return "\n".join([*table, "", latency_line]), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.perf_counter()
    table, notes = run(args.folds)
    print("\n".join(notes))
    print(table)
    if not args.no_write:
        write_section("learned-router", "\n".join([
            "## Learned router (pre-call, RouteLLM metrics)",
            "",
            f"`.venv/bin/python -m loadtests.bench_router --folds {args.folds}` — {machine_line()}, "
            f"{time.perf_counter() - started:.0f} s. Dev data (../shared/data), scored only on held-out "
            "folds. Cross-subject MMLU folds hold out whole subjects; the \"subjects shared\" rows (plain "
            "k-fold) are a reference only, optimistic for unseen topics. Weak = Mixtral-8x7B, "
            "strong = GPT-4 (RouteLLM's recorded answers). Embeddings: all-MiniLM-L6-v2; label: strong "
            "right and weak wrong unless stated. Random = mean of 20 seeded random routers on the same folds.",
            "",
            *[f"- {n}" for n in notes if not n.startswith("  ")],
            "",
            table,
        ]))


if __name__ == "__main__":
    main()
