"""What the request journal costs on the hot path: the same gateway with ``SLM_GATEWAY_JOURNAL``
on and off, side by side, measured in interleaved rounds.

Two gateway processes (static route to the instant fake upstream, embedded SQLite store, auth
off, one worker each) run at once; each round loads one then the other with the closed-loop
load generator (its own process), alternating which goes first, so machine noise hits both
alike. Reported per concurrency: the median over rounds of p50 / p99 latency and of the server's
CPU ms per request, and the on/off ratios. With the journal on, every answer waits for its
record's line to be written and fsynced (group commit), so p50 at concurrency 1 shows one
fsync; at higher concurrency one fsync serves many requests.

    .venv/bin/python -m loadtests.bench_journal [--rounds 6] [--duration 6] [--concurrency 1 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.bench_report import machine_line, write_section
from loadtests.overhead import Target, gateway_policy, run_phase, start_fake
from loadtests.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
MODES = ("on", "off")


def start_gateway(workdir: Path, upstream: str, journal: str) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(gateway_policy(workdir, upstream)),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {"SLM_GATEWAY_DATA_DIR": str(workdir / f"data-{journal}"), "SLM_GATEWAY_JOURNAL": journal,
           "OMP_NUM_THREADS": "1", "SLM_GATEWAY_THREADS": "1"}
    return ServerProcess(f"gateway journal={journal}", command, base_url=f"http://127.0.0.1:{port}",
                         ready_path="/ready", log_path=workdir / f"gateway-{journal}.log", env=env,
                         cwd=REPO).start(timeout=180)


def summarise(runs: dict[tuple[str, int], list[dict[str, Any]]], concurrencies: list[int]) -> list[str]:
    rows = ["| clients | journal | p50 ms | p99 ms | server CPU ms/req | req/s | errors |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    ratios: list[str] = []
    for clients in concurrencies:
        medians: dict[str, dict[str, float]] = {}
        for mode in MODES:
            phases = runs[(mode, clients)]
            medians[mode] = {name: statistics.median(p[name] for p in phases)
                             for name in ("p50_ms", "p99_ms", "server_cpu_ms_per_req", "rps")}
            errors = sum(p["errors"] for p in phases)
            m = medians[mode]
            rows.append(f"| {clients} | {mode} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                        f"{m['server_cpu_ms_per_req']:.3f} | {m['rps']:.0f} | {errors} |")
        on, off = medians["on"], medians["off"]
        ratios.append(f"- {clients} client(s): p50 on/off = {on['p50_ms'] / off['p50_ms']:.2f}x "
                      f"(+{on['p50_ms'] - off['p50_ms']:.2f} ms), CPU/req on/off = "
                      f"{on['server_cpu_ms_per_req'] / off['server_cpu_ms_per_req']:.2f}x "
                      f"(+{on['server_cpu_ms_per_req'] - off['server_cpu_ms_per_req']:.3f} ms)")
    return [*rows, "", *ratios]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_journal", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slmgw-journal-bench-") as tmp:
        workdir = Path(tmp)
        fake = start_fake(workdir, args.max_tokens)
        servers: dict[str, ServerProcess] = {}
        try:
            for mode in MODES:
                servers[mode] = start_gateway(workdir, fake.base_url + "/v1", mode)
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {(m, c): [] for m in MODES for c in args.concurrency}
            load_before = os.getloadavg()[0]
            for round_index in range(args.rounds):
                order = MODES if round_index % 2 == 0 else MODES[::-1]
                for clients in args.concurrency:
                    for mode in order:
                        target = Target(mode, servers[mode].base_url + "/v1", "fake", servers[mode])
                        figures = run_phase(target, clients, args)
                        runs[(mode, clients)].append(figures)
                        print(f"round {round_index + 1} clients {clients} journal {mode}: "
                              f"p50 {figures['p50_ms']:.2f} ms CPU {figures['server_cpu_ms_per_req']:.3f} ms/req",
                              flush=True)
            load_after = os.getloadavg()[0]
        finally:
            for server in servers.values():
                server.stop()
            fake.stop()
    command = (f"`.venv/bin/python -m loadtests.bench_journal --rounds {args.rounds} --duration {args.duration:g} "
               f"--concurrency {' '.join(map(str, args.concurrency))}{' --stream' if args.stream else ''}`")
    lines = [
        "## Request journal on the hot path",
        "",
        f"{command} — {machine_line()}; load average {load_before:.1f} before, {load_after:.1f} after "
        "(the box is shared). Two gateways side by side (`SLM_GATEWAY_JOURNAL=on` / `off`), static route to the "
        "instant fake upstream, embedded SQLite store, auth off, 1 worker, `OMP_NUM_THREADS=1`; journal on ext4 "
        f"(real fsync). Closed-loop clients in their own process, {'streamed' if args.stream else 'non-streamed'}, "
        f"max_tokens {args.max_tokens}; {args.rounds} interleaved rounds of {args.duration:g} s (+{args.warmup:g} s "
        "warm-up) per mode and concurrency, alternating which mode goes first; figures are medians over rounds.",
        "",
        *summarise(runs, args.concurrency),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_report:
        write_section("journal", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
