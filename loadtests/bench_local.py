"""Benchmark the in-process backend: load time (cold GGUF conversion vs cached), tokens/s for
one stream and for 4 concurrent streams, and peak RSS.

    .venv/bin/python loadtests/bench_local.py            # prints figures, updates docs/benchmarks.md

Targets (issue #2; checked here, never by timed asserts): cached load < 3 s, >= 12 tokens/s for
one stream on 2 cores, 4 concurrent streams >= 1.5x the aggregate of one, peak RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.backend import ChatMessage, SamplingParams, TokenChunk
from loadtests.bench_report import machine_line, write_section

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works.",
    "Describe the rules of chess briefly.",
    "Give me a recipe for pancakes.",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _stream(backend: Any, prompt: str, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = 0
    first = None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    async for event in backend.stream_chat([ChatMessage(role="user", content=prompt)], params):
        if isinstance(event, TokenChunk):
            tokens += len(event.token_ids) or 1
            first = first or time.perf_counter()
    return tokens, (first or time.perf_counter()) - started


async def serve_phase(max_tokens: int) -> dict[str, float]:
    from gateway.backends.local.backend import LocalModelBackend
    from gateway.backends.local.config import LocalBackend

    backend = LocalModelBackend("slm", LocalBackend(type="local", default_max_tokens=max_tokens))
    started = time.perf_counter()
    # Library imports are a once-per-process cost, reported apart from loading the weights.
    import transformers.models.auto.modeling_auto
    import transformers.models.auto.tokenization_auto  # noqa: F401

    imports_s = time.perf_counter() - started
    started = time.perf_counter()
    await backend.start()
    load_s = time.perf_counter() - started
    await _stream(backend, "warm up", 4)
    started = time.perf_counter()
    tokens, ttft = await _stream(backend, PROMPTS[0], max_tokens)
    single_tps = tokens / (time.perf_counter() - started)
    started = time.perf_counter()
    results = await asyncio.gather(*[_stream(backend, p, max_tokens) for p in PROMPTS])
    aggregate_tps = sum(r[0] for r in results) / (time.perf_counter() - started)
    await backend.close()
    return {"imports_s": imports_s, "cached_load_s": load_s, "single_tps": single_tps, "single_ttft_ms": ttft * 1000,
            "concurrent4_tps": aggregate_tps, "peak_rss_mb": peak_rss_mb()}


def cold_load_s() -> float:
    from gateway.backends.local.loader import ensure_hf_directory, resolve_source

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        ensure_hf_directory(resolve_source("smollm2"), Path(cache))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--serve-phase", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.serve_phase:
        print(json.dumps(asyncio.run(serve_phase(args.max_tokens))))
        return
    cold = cold_load_s()
    # A fresh process, so the conversion's memory does not count towards serving RSS.
    out = subprocess.run([sys.executable, __file__, "--serve-phase", "--max-tokens", str(args.max_tokens)],
                         capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["cold_load_s"] = cold
    figures["speedup_4x"] = figures["concurrent4_tps"] / figures["single_tps"]
    print(json.dumps(figures, indent=2))
    rows = [
        ("cold load (GGUF de-quantise + write cache)", f"{cold:.1f} s", "—"),
        ("cached load (tokenizer + weights)", f"{figures['cached_load_s']:.2f} s "
         f"(+ {figures['imports_s']:.1f} s importing transformers, once per process)", "< 3 s"),
        ("one stream", f"{figures['single_tps']:.1f} tokens/s "
         f"(TTFT {figures['single_ttft_ms']:.0f} ms)", "≥ 12"),
        ("4 concurrent streams, aggregate",
         f"{figures['concurrent4_tps']:.1f} tokens/s ({figures['speedup_4x']:.2f}× one stream)", "≥ 1.5×"),
        ("peak RSS while serving", f"{figures['peak_rss_mb']:.0f} MB", "< 1.5 GB"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    if not args.no_write:
        write_section("local-backend", f"""## In-process backend (SmolLM2-135M-Instruct, transformers, CPU)

`python loadtests/bench_local.py` — {machine_line()};
greedy, {args.max_tokens} new tokens per stream.

| measure | result | target |
|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
