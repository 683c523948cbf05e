"""Benchmark the in-process engines (issue 16): llama.cpp vs transformers on the same GGUFs.

    .venv/bin/python loadtests/bench_local.py            # prints a markdown table, updates docs/benchmarks.md

One thread everywhere (``SLM_GATEWAY_THREADS=1``, torch 1 thread, llama.cpp ``n_threads=1``).
Each measurement runs in a fresh process (``loadtests/bench_local_phases.py``); contenders
sharing a measurement are interleaved round by round. Targets (checked here, never by timed
asserts): decode ≥ 5x transformers on SmolLM2-135M and ≥ 8x on Qwen2.5-Coder-1.5B, within
10 % of llama-cpp-python's own ``Llama.generate``; 4 streams ≥ 1.5x one; TTFT of a 500-token
prompt while 3 streams run ≤ 1.5x alone; peak RSS of a whole ``slm-gateway serve`` ≤ 400 MB
with SmolLM2 at the default context, ≤ 1.6 GB with Coder-1.5B; cold start of a GGUF ≤ 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_report import machine_line, write_section
from loadtests.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
PHASES = Path(__file__).resolve().parent / "bench_local_phases.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SLM_GATEWAY_THREADS": "1"}


def coder(size: str) -> Path:
    models = Path(os.environ.get("SLM_GATEWAY_MODELS", "~/.cache/slm-gateway/models")).expanduser()
    return models / f"qwen2.5-coder-{size}-instruct-q4_k_m.gguf"


def phase(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(PHASES), *args], capture_output=True, text=True, env=ENV, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"phase {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def gateway_rss(policy: dict[str, Any], name: str, long_prompt: int) -> dict[str, Any]:
    """Peak RSS (VmHWM) of a real ``slm-gateway serve`` after single, concurrent and long requests."""
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        port = free_port()
        server = ServerProcess(
            name, [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(path), "--port", str(port)],
            base_url=f"http://127.0.0.1:{port}", ready_path="/ready", log_path=Path(workdir) / "gateway.log",
            env={**ENV, "SLM_GATEWAY_DATA_DIR": str(Path(workdir) / "data")}, cwd=REPO,
        )
        started = time.perf_counter()
        with server.start(timeout=300):
            ready_s = time.perf_counter() - started
            url = f"{server.base_url}/v1"

            def chat(text: str) -> int:
                body = {"model": "slm", "messages": [{"role": "user", "content": text}], "max_tokens": 64,
                        "temperature": 0}
                return httpx.post(f"{url}/chat/completions", json=body, timeout=600).status_code

            statuses = [chat("Write a haiku about the sea.")]
            with ThreadPoolExecutor(4) as pool:
                statuses += list(pool.map(chat, ["Name a colour.", "Name a city.", "Name a fruit.", "Count to 5."]))
            body = {"model": "slm", "prompt": [(7 * i) % 30000 + 100 for i in range(long_prompt)], "max_tokens": 8}
            statuses.append(httpx.post(f"{url}/completions", json=body, timeout=600).status_code)
            assert server.process is not None
            status = Path(f"/proc/{server.process.pid}/status").read_text()
            maps = Path(f"/proc/{server.process.pid}/maps").read_text()
            hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
            return {"peak_rss_mb": hwm_kb / 1024, "ready_s": ready_s, "statuses": statuses,
                    "torch_loaded": "libtorch" in maps, "load": list(os.getloadavg())}


def run(tokens_small: int, tokens_coder: int, rounds: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"load_start": list(os.getloadavg())}
    figures["decode_smollm2"] = phase("decode", "smollm2", str(tokens_small), str(rounds))
    if coder("1.5b").exists():
        figures["decode_coder"] = phase("decode", str(coder("1.5b")), str(tokens_coder), str(rounds))
    figures["serving"] = phase("serving", "128", str(rounds))
    default_policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    figures["rss_smollm2"] = gateway_rss(default_policy, "smollm2", long_prompt=6000)
    figures["cold_smollm2"] = phase("cold", "smollm2")
    if coder("1.5b").exists():
        coder_policy = {"version": 1, "backends": {"slm": {"type": "local", "model": str(coder("1.5b"))}},
                        "models": {"slm": {"type": "static", "backend": "slm"}}}
        figures["rss_coder"] = gateway_rss(coder_policy, "coder", long_prompt=6000)
        figures["cold_coder"] = phase("cold", str(coder("1.5b")))
    figures["load_end"] = list(os.getloadavg())
    return figures


def _fmt_load(load: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def table(f: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    for key, label, wanted in (("decode_smollm2", "SmolLM2-135M", 5), ("decode_coder", "Qwen2.5-Coder-1.5B", 8)):
        if key not in f:
            continue
        m = f[key]["median"]
        ratio = m["llamacpp"] / m["transformers"]
        rows.append((f"{label}: decode tokens/s, llama.cpp engine vs transformers (1 thread)",
                     f"{m['llamacpp']:.1f} vs {m['transformers']:.1f} = **{ratio:.1f}x**", f"≥ {wanted}x"))
        gap = m["llamacpp"] / m["llama-cpp-python"] - 1
        rows.append((f"{label}: engine vs llama-cpp-python `Llama.generate`, same file",
                     f"{m['llamacpp']:.1f} vs {m['llama-cpp-python']:.1f} ({gap:+.1%}); time outside "
                     f"`llama_decode` {f[key]['engine_overhead']:.1%} of the engine's decode", "within 10 %"))
    s = f["serving"]["median"]
    c = f["serving"]["step_costs"]
    rows.append(("SmolLM2: 4 concurrent streams, aggregate vs one",
                 f"{s['four']:.1f} vs {s['one']:.1f} tokens/s = **{s['four'] / s['one']:.2f}x** (the hardware's "
                 f"limit: one decode step of 4 sequences costs {c['step4_ms']:.1f} ms vs {c['step1_ms']:.1f} for 1, "
                 f"i.e. ~{4 * c['step1_ms'] / c['step4_ms']:.2f}x from batching alone)", "≥ 1.5x"))
    rows.append(("SmolLM2: TTFT of a 500-token prompt, 3 streams running vs alone",
                 f"{s['ttft_loaded'] * 1e3:.0f} vs {s['ttft_alone'] * 1e3:.0f} ms = "
                 f"**{s['ttft_loaded'] / s['ttft_alone']:.2f}x**", "≤ 1.5x"))
    for key, label, target in (("rss_smollm2", "SmolLM2 (default policy, context 8192)", "≤ 400 MB"),
                               ("rss_coder", "Qwen2.5-Coder-1.5B (context 8192)", "≤ 1.6 GB")):
        if key in f:
            r = f[key]
            result = f"{r['peak_rss_mb']:.0f} MB (torch loaded: {r['torch_loaded']}; ready in {r['ready_s']:.1f} s)"
            rows.append((f"peak RSS, whole `slm-gateway serve`, {label}", result, target))
    for key, label in (("cold_smollm2", "SmolLM2"), ("cold_coder", "Qwen2.5-Coder-1.5B")):
        if key in f:
            rows.append((f"cold start of the GGUF, {label} (fresh process, no conversion)",
                         f"{f[key]['seconds']:.2f} s", "≤ 5 s"))
    return "| measure | result | target |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens-small", type=int, default=64, help="tokens per decode run, SmolLM2")
    parser.add_argument("--tokens-coder", type=int, default=24, help="tokens per decode run, Coder-1.5B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    figures = run(args.tokens_small, args.tokens_coder, args.rounds)
    print(json.dumps(figures, indent=2))
    markdown = f"""## In-process engines: llama.cpp vs transformers (issue 16)

`python loadtests/bench_local.py` — {machine_line()}; 1 thread per engine (`SLM_GATEWAY_THREADS=1`);
load average (1/5/15 min) {_fmt_load(figures['load_start'])} at the start, {_fmt_load(figures['load_end'])} at the end
(a shared box: other jobs ran alongside). Greedy; decode rates exclude the prompt's prefill; medians of
{args.rounds} interleaved rounds ({args.tokens_small} tokens per run on SmolLM2, {args.tokens_coder} on Coder-1.5B).

{table(figures)}
"""
    print(markdown)
    if not args.no_write:
        write_section("local-backend", markdown)


if __name__ == "__main__":
    main()
