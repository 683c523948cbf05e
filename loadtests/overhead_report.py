"""Turn overhead results into a console table, a markdown section and a PNG.

``results`` maps target ("direct" | "gateway" | "litellm") to concurrency (as a string, JSON
style) to the measured figures (see loadtests/overhead.py), or to ``{"error": ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]
TARGETS = ("direct", "gateway", "litellm")


def phases(results: Results, target: str) -> dict[int, dict[str, Any]]:
    """Concurrency -> figures for a target that ran (skipped and failed targets give {})."""
    runs = results.get(target) or {}
    return {int(level): figures for level, figures in runs.items() if level.isdigit()}


def table_rows(results: Results) -> list[list[str]]:
    rows = []
    for target in TARGETS:
        runs = results.get(target)
        if not runs:
            continue
        if "error" in runs:
            rows.append([target, "-", f"failed: {str(runs['error']).splitlines()[0][:60]}", *[""] * 6])
            continue
        for level, f in sorted(phases(results, target).items()):
            added = f"+{f['added_p50_ms']:.1f} / +{f['added_p99_ms']:.1f}" if "added_p50_ms" in f else "-"
            rows.append(
                [
                    target,
                    str(level),
                    f"{f['p50_ms']:.1f}",
                    f"{f['p95_ms']:.1f}",
                    f"{f['p99_ms']:.1f}",
                    f"{f['rps']:.0f}",
                    added,
                    f"{f['server_cpu_ms_per_req']:.2f}",
                    f"{f['errors']}",
                ]
            )
    return rows


HEADERS = [
    "target",
    "clients",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "req/s",
    "added p50 / p99 ms",
    "server CPU ms/req",
    "errors",
]


def console_table(results: Results) -> str:
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def max_rps(results: Results) -> dict[str, float]:
    return {
        target: max(f["rps"] for f in phases(results, target).values())
        for target in TARGETS
        if phases(results, target)
    }


def write_png(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency_ax, rps_ax, cpu_ax) = plt.subplots(1, 3, figsize=(15, 4.4))
    ran = [t for t in TARGETS if phases(results, t)]
    for index, target in enumerate(ran):
        runs = phases(results, target)
        levels = sorted(runs)
        line = latency_ax.plot(levels, [runs[c]["p50_ms"] for c in levels], marker="o", label=f"{target} p50")
        latency_ax.plot(
            levels,
            [runs[c]["p99_ms"] for c in levels],
            marker="x",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{target} p99",
        )
        rps_ax.plot(levels, [runs[c]["rps"] for c in levels], marker="o", label=target)
        width = 0.8 / len(ran)
        positions = [k + index * width for k in range(len(levels))]
        cpu_ax.bar(positions, [runs[c]["server_cpu_ms_per_req"] for c in levels], width, label=target)
        cpu_ax.set_xticks([k + 0.4 - width / 2 for k in range(len(levels))], [str(c) for c in levels])
    latency_ax.set(xlabel="concurrent clients", ylabel="latency (ms)", title="Latency per request")
    rps_ax.set(xlabel="concurrent clients", ylabel="requests / s", title="Throughput (closed loop)")
    cpu_ax.set(xlabel="concurrent clients", ylabel="CPU ms / request", title="Server CPU per request")
    for ax in (latency_ax, rps_ax):
        ax.set_xscale("log")
        ax.set_yscale("log")
    for ax in (latency_ax, rps_ax, cpu_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Client -> (gateway | LiteLLM | nothing) -> instant fake upstream")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(results: Results) -> list[str]:
    """The issue's targets checked against this run: added latency at 100 clients, throughput ratio."""
    lines = []
    gateway = phases(results, "gateway")
    if 100 in gateway and "added_p50_ms" in gateway[100]:
        added = gateway[100]
        for key, limit in (("p50", 1.0), ("p99", 5.0)):
            value = added[f"added_{key}_ms"]
            lines.append(f"added {key} at 100 clients {value:.1f} ms (target ≤ {limit:g} ms): "
                         f"{'met' if value <= limit else 'NOT met'}")
    peaks = max_rps(results)
    if "gateway" in peaks and "litellm" in peaks:
        ratio = peaks["gateway"] / peaks["litellm"]
        lines.append(f"max req/s gateway / LiteLLM = {ratio:.1f}x (target ≥ 5x): {'met' if ratio >= 5 else 'NOT met'}")
    return lines


def markdown_section(
    results: Results, *, command: str, machine: str, meta: dict[str, Any], png_name: str | None
) -> str:
    peak = ", ".join(f"{t} {v:.0f}" for t, v in max_rps(results).items())
    parts = [
        "## Gateway overhead vs LiteLLM",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {machine}. Load: closed-loop asyncio clients (one keep-alive connection each) in a "
        f"separate process, {meta['duration_s']:.0f} s per phase after {meta['warmup_s']:.0f} s warm-up, "
        f"{'streamed' if meta.get('stream') else 'non-streamed'} chat requests with max_tokens "
        f"{meta['max_tokens']}; "
        f"the fake upstream answers instantly ({meta['completion_tokens']} tokens), so every millisecond "
        "above `direct` is the proxy's. Gateway: `slm-gateway serve --workers "
        f"{meta['gateway_workers']}`, static route; LiteLLM {meta.get('litellm_version') or '-'} proxy, "
        "1 worker. 'added' = target percentile minus direct percentile at the same concurrency; "
        "'server CPU' = CPU time of the proxy process tree (direct: the fake's) per request, "
        "warm-up included.",
        "",
        markdown_table(results),
        "",
        f"Max sustained throughput (req/s, best phase): {peak}.",
        "",
        *[f"- {line}" for line in verdict(results)],
        "",
        "Caveat: measured on a small machine shared with other jobs; the load generator, the fake, and the "
        "proxy compete for the same cores, so absolute figures are noisy and throughput is capped by the "
        "machine, not only by the proxy. Compare rows from the same run.",
    ]
    if png_name:
        parts += ["", f"![gateway overhead]({png_name})"]
    return "\n".join(parts)
