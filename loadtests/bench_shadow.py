"""Shadow jobs and the client: TTFT and latency of a self-calibrating cascade with shadowing on
(``sample_rate: 1.0``) vs off, interleaved; then a load run showing shadow jobs stay within their
concurrency cap and daily budget.

    .venv/bin/python -m loadtests.bench_shadow --large upstream --requests 30 --load-requests 48

The gateway under test is a real ``slm-gateway serve`` process; its small tier is SmolLM2-135M
in-process (llama.cpp). The large tier is ``--large upstream``: a second gateway process serving
SmolLM2 over HTTP (real upstream calls; on a small box its CPU competes with the small tier's),
or ``--large echo``: the echo backend (the model is not the point: what the gateway itself pays
for shadowing). Both tiers are priced (the LLM at $100 / $400 per 1M tokens, so a shadow job costs
about a cent and the budget binds). Cascades keep every answer (threshold -1e9), so with
``sample_rate: 1.0`` every request is shadowed; ``apply: false`` keeps the threshold fixed.

Phase 1, one request at a time, streamed, ``plain`` and ``shadowed`` alternating (order swapped
every pair): *quiet* waits until the previous pair's shadow job ended (what shadowing costs on
the client's own path), *busy* does not (the next requests overlap the shadow jobs).
Phase 2: ``--clients`` concurrent clients send ``--load-requests`` to ``loaded`` (cap 2, budget
``--load-budget`` a day); /metrics is sampled every 50 ms for the jobs in flight, and afterwards the shadow
records (the gateway's own accounting store) give the peak overlap and the spend.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from gateway.accounting.metrics import GatewayMetrics
from gateway.accounting.selfcal_sqlite import SQLiteSelfCalStore
from gateway.accounting.service import build_accounting
from gateway.accounting.sqlite_store import SQLiteRecordStore
from gateway.core.strategy import GatewayResources, RequestContext
from gateway.serving.selfcal_service import SelfCalService
from loadtests.bench_report import machine_line, write_section
from loadtests.processes import ServerProcess, free_port
from policies.loader import parse_policy

COMMAND = "python -m loadtests.bench_shadow"
PRICE = {"input_per_1m": 100.0, "output_per_1m": 400.0}
CAP = 2
PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello in French.", "Name a fruit.",
           "What is the capital of Italy?", "Count to three.", "Name an animal.", "What day comes after Monday?"]


def gateway_policy(large: str, upstream_url: str | None, load_budget: float) -> dict[str, Any]:
    small_tier = {"backend": "slm", "scorer": "mean_logprob", "threshold": -1e9, "max_tokens": 24}

    def shadowed(max_concurrent: int, budget: float) -> dict[str, Any]:
        selfcal = {"judge": {"type": "normalized", "extract": "text"}, "sample_rate": 1.0, "apply": False,
                   "max_concurrent": max_concurrent, "budget_usd_per_day": budget}
        return {"type": "cascade", "mode": "buffer", "tiers": [{**small_tier, "self_calibration": selfcal},
                                                               {"backend": "llm", "max_tokens": 24}]}

    llm: dict[str, Any] = {"type": "echo", "price": PRICE}
    if large == "upstream":
        llm = {"type": "openai", "base_url": f"{upstream_url}/v1", "model": "llm", "price": PRICE,
               "timeouts": {"connect": 5.0, "first_token": 120.0, "total": 300.0, "idle": 120.0}}
    return {
        "version": 1, "gateway": {"reference_llm": "llm"},
        "backends": {"slm": {"type": "local", "model": "smollm2", "max_batch_size": 8, "threads": 1}, "llm": llm},
        "models": {
            "plain": {"type": "cascade", "mode": "buffer", "tiers": [small_tier, {"backend": "llm", "max_tokens": 24}]},
            "shadowed": shadowed(4, 100.0),
            "loaded": shadowed(CAP, load_budget),
        },
    }


def upstream_policy() -> dict[str, Any]:
    return {"version": 1, "backends": {"llm": {"type": "local", "model": "smollm2", "max_batch_size": 8,
                                               "threads": 1}},
            "models": {"llm": {"type": "static", "backend": "llm"}}}


def serve(name: str, policy: dict[str, Any], workdir: Path) -> ServerProcess:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    port = free_port()
    env = {"SLM_GATEWAY_DATA_DIR": str(workdir / f"{name}-data"), "SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env_clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded stores: nothing shared
    process = ServerProcess(name, [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(path), "--host",
                                   "127.0.0.1", "--port", str(port)], base_url=f"http://127.0.0.1:{port}",
                            ready_path="/ready", log_path=workdir / f"{name}.log", env=env)
    process.env = {**env_clean, "PYTHONUNBUFFERED": "1", **env}
    return process


async def chat(client: httpx.AsyncClient, model: str, prompt: str) -> tuple[float, float]:
    """(TTFT, latency) in seconds of one streamed request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True, "max_tokens": 24,
            "temperature": 0}
    started = time.perf_counter()
    ttft: float | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                ttft = time.perf_counter() - started
    latency = time.perf_counter() - started
    return (ttft if ttft is not None else latency), latency


async def submit_cost(workdir: Path, jobs: int = 5000) -> tuple[float, float, float]:
    """(p50, p99, max) microseconds of ``ShadowRunner.submit`` — all a shadow job costs the client's path."""
    policy = parse_policy({"version": 1, "backends": {"llm": {"type": "echo", "price": PRICE}},
                           "models": {"llm": {"type": "static", "backend": "llm"}}})
    accounting = build_accounting(None, workdir / "submit-accounting")
    await accounting.start()
    service = SelfCalService(SQLiteSelfCalStore(workdir / "submit-selfcal.sqlite3"), accounting, GatewayMetrics())
    runner = service.jobs.bind(policy, GatewayResources(backends={}, prices={}))

    async def job(ctx: RequestContext) -> None:
        ctx.set_route("noop")

    timings = []
    try:
        for _ in range(jobs):
            started = time.perf_counter()
            runner.submit("bench", job, max_concurrent=jobs, budget_usd_per_day=1e6, estimated_cost_usd=0.001)
            timings.append((time.perf_counter() - started) * 1e6)
            if len(timings) % 100 == 0:
                await asyncio.sleep(0)  # let the jobs run, as a server's loop would between requests
        await service.jobs.wait_idle(120)
    finally:
        await service.close(grace_s=10)
        await accounting.close()
    return float(np.median(timings)), float(np.percentile(timings, 99)), float(np.max(timings))


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0][len(name) + 1:] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def in_flight(client: httpx.AsyncClient, model: str) -> float:
    """Shadow jobs running: started minus recorded (both counted by the gateway itself)."""
    text = (await client.get("/metrics")).text
    return (metric(text, "slm_gateway_shadow_jobs_started_total", model=model)
            - metric(text, "slm_gateway_shadow_jobs_total", model=model, route="shadow"))


async def wait_quiet(client: httpx.AsyncClient, model: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await in_flight(client, model) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def paired(client: httpx.AsyncClient, n: int, quiet: bool) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "shadowed": [], "plain first": [],
                                                     "plain second": []}
    for index in range(n):
        # Every prompt is asked in both orders (pairs 2k and 2k+1), and which order comes first swaps
        # from one prompt to the next: neither model is systematically the first to see a prompt
        # (the prompts are warmed beforehand too, so that none is uncached for either).
        order = ("plain", "shadowed") if (index + index // 2) % 2 == 0 else ("shadowed", "plain")
        for model in order:
            results[model].append(await chat(client, model, PROMPTS[(index // 2) % len(PROMPTS)]))
        # Where a shadow job can overlap a request: only the plain request right after a shadowed one.
        position = "plain second" if order[0] == "shadowed" else "plain first"
        results[position].append(results["plain"][-1])
        if quiet:
            await wait_quiet(client, "shadowed")
    return results


async def load_run(client: httpx.AsyncClient, clients: int, requests: int) -> dict[str, Any]:
    samples: list[float] = []
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            samples.append(await in_flight(client, "loaded"))
            await asyncio.sleep(0.05)

    queue = list(range(requests))

    async def user() -> None:
        while queue:
            index = queue.pop()
            await chat(client, "loaded", PROMPTS[index % len(PROMPTS)])

    watcher = asyncio.create_task(sampler())
    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await wait_quiet(client, "loaded")
    done.set()
    await watcher
    text = (await client.get("/metrics")).text
    return {"elapsed_s": elapsed, "sampled_peak": max(samples, default=0.0),
            "started": metric(text, "slm_gateway_shadow_jobs_started_total", model="loaded"),
            "skipped_cap": metric(text, "slm_gateway_shadow_jobs_skipped_total", model="loaded", reason="cap"),
            "skipped_budget": metric(text, "slm_gateway_shadow_jobs_skipped_total", model="loaded", reason="budget"),
            "spend_today": metric(text, "slm_gateway_shadow_spend_today_usd", model="loaded")}


async def shadow_records(data_dir: Path, model: str) -> list[dict[str, Any]]:
    store = SQLiteRecordStore(data_dir / "accounting.sqlite3")
    try:
        records = await store.recent_records(100_000)
    finally:
        await store.close()
    return [r for r in records if r["endpoint"] == "shadow" and r["public_model"] == model]


def peak_overlap(records: list[dict[str, Any]]) -> int:
    events = sorted([(r["created_at"], 1) for r in records] +
                    [(r["created_at"] + r["latency_ms"] / 1000, -1) for r in records], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _at, step in events:
        running += step
        peak = max(peak, running)
    return peak


def summary(pairs: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    ttft = np.array([p[0] for p in pairs]) * 1000
    latency = np.array([p[1] for p in pairs]) * 1000
    return float(np.mean(ttft)), float(np.median(ttft)), float(np.mean(latency)), float(np.percentile(latency, 95))


def table(title: str, results: dict[str, list[tuple[float, float]]]) -> list[str]:
    lines = [f"{title}:", "", "| | TTFT mean (ms) | TTFT p50 | latency mean | latency p95 |", "|---|---|---|---|---|"]
    for model in ("plain", "shadowed"):
        mean_ttft, p50_ttft, mean_latency, p95_latency = summary(results[model])
        lines.append(f"| {model} | {mean_ttft:.0f} | {p50_ttft:.0f} | {mean_latency:.0f} | {p95_latency:.0f} |")
    ratio = summary(results["shadowed"])[1] / summary(results["plain"])[1]
    # Pairs ran back to back (order swapped every pair): their difference cancels the box's drift.
    differences = np.array([(s[0] - p[0]) * 1000 for s, p in zip(results["shadowed"], results["plain"], strict=True)])
    rng = np.random.default_rng(0)
    medians = [float(np.median(rng.choice(differences, len(differences)))) for _ in range(2000)]
    low, high = np.percentile(medians, [2.5, 97.5])
    first, second = summary(results["plain first"])[1], summary(results["plain second"])[1]
    return [*lines, "", f"p50 TTFT ratio shadowed / plain: {ratio:.2f}; median paired TTFT difference (shadowed − "
            f"plain) {np.median(differences):+.0f} ms, 95 % bootstrap interval [{low:+.0f}, {high:+.0f}] ms. "
            f"Plain TTFT p50 when it went first in its pair {first:.0f} ms, right after a shadowed request (whose "
            f"shadow job may still run) {second:.0f} ms.", ""]


async def main_async(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    load_start = os.getloadavg()[0]
    submit_p50, submit_p99, submit_max = await submit_cost(workdir)
    upstream: ServerProcess | None = None
    if args.large == "upstream":
        upstream = serve("upstream", upstream_policy(), workdir).start(timeout=600)
    gateway = serve("gateway", gateway_policy(args.large, upstream.base_url if upstream else None, args.load_budget),
                    workdir)
    try:
        gateway.start(timeout=600)
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=600) as client:
            for prompt in PROMPTS:  # warm both tiers and the prefix cache with every prompt
                await chat(client, "plain", prompt)
            await wait_quiet(client, "shadowed")
            quiet = await paired(client, args.requests, quiet=True)
            busy = await paired(client, args.requests, quiet=False)
            await wait_quiet(client, "shadowed")
            load = await load_run(client, args.clients, args.load_requests)
        records = await shadow_records(workdir / "gateway-data", "loaded")
    finally:
        gateway.stop()
        if upstream is not None:
            upstream.stop()
    large = "a second gateway process serving SmolLM2 over HTTP" if args.large == "upstream" else \
        "the echo backend (in-process; the model is not the point)"
    spent = sum(r["cost_usd"] for r in records)
    lines = [
        f"## Shadow jobs: client TTFT with shadowing on vs off, and the cap and budget under load ({args.large})",
        "",
        f"`{COMMAND} --large {args.large} --requests {args.requests} --load-requests {args.load_requests} "
        f"--clients {args.clients} --load-budget {args.load_budget}` — {machine_line()}; SLM_GATEWAY_THREADS=1 in "
        f"every process; load average at start / end {load_start:.1f} / {os.getloadavg()[0]:.1f}.",
        "",
        f"Small tier SmolLM2-135M in-process (llama.cpp), large tier {large}; buffer cascades keeping every "
        "answer, `shadowed` with `sample_rate: 1.0` (every request shadowed), `plain` without self-calibration; "
        "streamed, max_tokens 24, one request at a time, the two models alternating.",
        "",
        f"What a shadow job costs the client's own path — `ShadowRunner.submit` (the cap and budget checks "
        f"and creating the task), 5000 calls in-process: p50 {submit_p50:.1f} µs, p99 {submit_p99:.1f} µs, max "
        f"{submit_max / 1000:.1f} ms.",
        "",
        *table(f"Quiet (each pair waits for its shadow job), {args.requests} pairs", quiet),
        *table(f"Busy (requests overlap the shadow jobs), {args.requests} pairs", busy),
        f"Load: {args.clients} concurrent clients, {args.load_requests} requests to `loaded` (cap {CAP}, budget "
        f"${args.load_budget:.2f}/day) in {load['elapsed_s']:.0f} s: {load['started']:.0f} shadow jobs started, "
        f"{load['skipped_cap']:.0f} skipped at the cap, {load['skipped_budget']:.0f} skipped for the budget; "
        f"jobs in flight: at most {load['sampled_peak']:.0f} in /metrics samples every 50 ms, at most "
        f"{peak_overlap(records)} by the shadow records' own start/end times (cap {CAP}); shadow spend "
        f"${spent:.4f} by the records, ${load['spend_today']:.4f} in the ledger (budget ${args.load_budget:.2f}).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--large", choices=("upstream", "echo"), default="upstream")
    parser.add_argument("--requests", type=int, default=30, help="pairs per phase-1 arm")
    parser.add_argument("--load-requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-budget", type=float, default=0.05, help="USD per day of the `loaded` cascade")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    text = asyncio.run(main_async(args))
    print(text)
    if not args.no_write:
        write_section(f"shadow-{args.large}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
