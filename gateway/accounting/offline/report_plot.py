"""The report's figure: cost and savings per group over time, latency and TTFT distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway.accounting.buckets import bucket_bounds
from gateway.accounting.store import GroupTotals, Histogram

TimeSeries = Sequence[tuple[float, Mapping[str, GroupTotals]]]


def plot_report(series: TimeSeries, window: Mapping[str, GroupTotals], group_by: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; chosen here, not at import, so importing never touches a display
    import matplotlib.pyplot as plt

    groups = sorted(window, key=lambda key: -window[key].requests)[:8]
    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    times = [datetime.fromtimestamp(start, tz=UTC) for start, _ in series]
    for group in groups:
        axes[0][0].plot(times, [buckets.get(group, GroupTotals()).cost_usd for _, buckets in series],
                        marker=".", label=group)
        axes[0][1].plot(times, [buckets.get(group, GroupTotals()).savings_usd for _, buckets in series],
                        marker=".", label=group)
        _step_histogram(axes[1][0], window[group].latency_hist, group)
        _step_histogram(axes[1][1], window[group].ttft_hist, group)
    titles = (
        (f"cost per {group_by} (USD per interval)", "USD"),
        (f"savings vs reference LLM per {group_by} (USD per interval)", "USD"),
        ("latency distribution", "requests"),
        ("time to first token distribution", "requests"),
    )
    for axis, (title, ylabel) in zip(axes.flat, titles, strict=True):
        axis.set_title(title)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if groups:
            axis.legend(fontsize=8)
    for axis in axes[1]:
        axis.set_xscale("log")
        axis.set_xlabel("ms (log scale)")
    axes[0][1].axhline(0.0, color="grey", linewidth=0.8)
    for axis in axes[0]:
        axis.tick_params(axis="x", labelrotation=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _step_histogram(axis: object, hist: Histogram, label: str) -> None:
    if not hist:
        return
    edges: list[float] = []
    counts: list[int] = []
    for index in range(min(hist), max(hist) + 1):
        edges.append(max(bucket_bounds(index)[0], 1e-3))
        counts.append(hist.get(index, 0))
    edges.append(bucket_bounds(max(hist))[1])
    axis.stairs(counts, edges, label=label)  # type: ignore[attr-defined]
