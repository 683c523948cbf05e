"""The quality-vs-strong-share plot (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from routers.learned.offline.training import Evaluation


def plot_evaluation(evaluation: Evaluation, path: Path, *, title: str = "Learned router") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    curve = evaluation.curve
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.plot(
        curve.strong_share * 100, curve.quality * 100, marker=".",
        label=f"learned (APGR {evaluation.router.apgr:.3f})",
    )
    axes.plot(
        [0, 100], [curve.weak_quality * 100, curve.strong_quality * 100], linestyle=":",
        label=f"random (APGR {evaluation.random.apgr:.3f})",
    )
    axes.axhline(curve.weak_quality * 100, color="grey", linestyle="--", label="weak only")
    axes.axhline(curve.strong_quality * 100, color="red", linestyle="--", label="strong only")
    axes.set_xlabel("Strong model calls (%)")
    axes.set_ylabel("Accuracy (%)")
    axes.set_title(f"{title} (n={evaluation.router.n})")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
