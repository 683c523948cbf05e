"""Reliability diagram and quality-vs-escalation curve (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(bins: list[tuple[float, float, int]], path: Path, *, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", label="calibrated score")
    for predicted, observed, count in bins:
        ax.annotate(str(count), (predicted, observed), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="predicted P(correct)", ylabel="observed accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_quality_curve(curve: Any, operating_point: tuple[float, float], path: Path, *, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve.strong_share, curve.quality, marker=".", label="cascade (threshold sweep)")
    ax.plot([0, 1], [curve.weak_quality, curve.strong_quality], linestyle="--", color="grey", label="random")
    ax.scatter([operating_point[0]], [operating_point[1]], color="red", zorder=3, label="policy threshold")
    ax.set(xlabel="share escalated to the large model", ylabel="accuracy", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
