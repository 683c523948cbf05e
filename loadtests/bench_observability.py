"""What the dashboard and tracing cost on the request path: the overhead benchmark's load, interleaved.

Three modes on the overhead benchmark's set-up (static route, ``openai`` backend, instant fake
upstream, closed-loop clients in their own process), phases interleaved round by round so that
machine noise hits every mode alike:

- ``plain``:     the gateway as shipped, tracing off (``OTEL_EXPORTER_OTLP_ENDPOINT`` unset)
- ``dashboard``: the same process while a poller fetches the dashboard's JSON every second
                 (the page polls every 5 s; every second is five open pages)
- ``traced``:    a second gateway with tracing on, exporting by OTLP/HTTP to a sink in this process

    python -m loadtests.bench_observability --rounds 3 --duration 5 --concurrency 10

Writes the ``observability`` section of docs/benchmarks.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_report import write_section
from loadtests.overhead import REPO, Target, gateway_policy, run_phase, start_fake
from loadtests.processes import ServerProcess, free_port

MODES = ("plain", "dashboard", "traced")


@contextmanager
def otlp_sink() -> Iterator[tuple[str, list[int]]]:
    """Accepts OTLP/HTTP exports and counts their bytes (decoding is the test's job, not this one's)."""
    received: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(len(self.rfile.read(int(self.headers.get("content-length", "0")))))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def start_gateway(workdir: Path, upstream: str, name: str, env: dict[str, str]) -> ServerProcess:
    port = free_port()
    (workdir / name).mkdir()
    policy = gateway_policy(workdir / name, upstream)
    command = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--log-level", "warning"]
    base = {"SLM_GATEWAY_DATA_DIR": str(workdir / name / "data"), "SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    server = ServerProcess(f"slm-gateway ({name})", command, base_url=f"http://127.0.0.1:{port}", ready_path="/ready",
                           log_path=workdir / name / "gateway.log", env={**base, **env}, cwd=REPO)
    server.env = {**clean, "PYTHONUNBUFFERED": "1", **base, **env}  # tracing only where asked, whatever our env
    return server.start(timeout=180)


@contextmanager
def poller(base_url: str, interval_s: float) -> Iterator[list[float]]:
    """Fetch the dashboard's JSON (overview + latest requests) every ``interval_s``; yields latencies."""
    stop = threading.Event()
    latencies: list[float] = []

    def loop() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get("/v1/gateway/dashboard/overview", params={"window": "15m"}).raise_for_status()
                client.get("/v1/gateway/dashboard/requests", params={"limit": 25}).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                stop.wait(interval_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(timeout=30)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out = {}
    for mode, phases in runs.items():
        out[mode] = {key: statistics.median(p[key] for p in phases)
                     for key in ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_req")}
        out[mode]["errors"] = sum(p.get("errors", 0) for p in phases)
    return out


def markdown(summary: dict[str, dict[str, float]], args: argparse.Namespace, load: tuple[float, float],
             polls: list[float], exported: int) -> str:
    plain = summary["plain"]
    lines = [
        "## Dashboard and tracing on the request path", "",
        f"Reproduce: `{' '.join(['python -m loadtests.bench_observability', *args.argv])}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{date.today().isoformat()}; gateway `--workers 1`, SLM_GATEWAY_THREADS=1; load average "
        f"{load[0]:.2f} at start, {load[1]:.2f} at end. The overhead benchmark's load ({args.concurrency} "
        f"closed-loop clients, non-streamed chat, instant fake upstream), {args.duration:g} s per phase after "
        f"{args.warmup:g} s warm-up, modes interleaved for {args.rounds} rounds; medians over rounds. "
        "Ratios are mode / plain.", "",
        "| mode | req/s | p50 ms | p99 ms | server CPU ms/req | req/s ratio | p50 ratio | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        s = summary[mode]
        lines.append(f"| {mode} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                     f"{s['server_cpu_ms_per_req']:.3f} | {s['rps'] / plain['rps']:.3f} | "
                     f"{s['p50_ms'] / plain['p50_ms']:.3f} | {s['errors']:.0f} |")
    if polls:
        lines += ["", f"Dashboard polls during the `dashboard` phases: {len(polls)}, median "
                      f"{statistics.median(polls):.1f} ms per overview + latest-requests fetch."]
    lines += [f"Traced phases exported {exported} OTLP/HTTP requests to the sink.", "",
              "`plain` is tracing off: no OpenTelemetry SDK is imported and no middleware installed "
              "(tests/test_telemetry_otlp.py checks both), so off has nothing to cost; `traced` shows what on costs."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_observability",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.stream = False
    load_start = os.getloadavg()[0]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-obs-")))
        fake = stack.enter_context(start_fake(workdir, 16))
        sink_url, received = stack.enter_context(otlp_sink())
        plain = stack.enter_context(start_gateway(workdir, f"{fake.base_url}/v1", "plain", {}))
        traced = stack.enter_context(start_gateway(workdir, f"{fake.base_url}/v1", "traced", {
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url}))
        targets = {"plain": Target("plain", f"{plain.base_url}/v1", "fake", plain),
                   "traced": Target("traced", f"{traced.base_url}/v1", "fake", traced)}
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        polls: list[float] = []
        for round_ in range(args.rounds):
            for mode in MODES:
                if mode == "dashboard":
                    with poller(plain.base_url, args.poll_interval) as latencies:
                        figures = run_phase(targets["plain"], args.concurrency, args)
                    polls += latencies
                else:
                    figures = run_phase(targets[mode], args.concurrency, args)
                runs[mode].append(figures)
                print(f"round {round_ + 1} {mode:9s} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:.2f} ms  "
                      f"p99 {figures['p99_ms']:.2f} ms  cpu {figures['server_cpu_ms_per_req']:.3f} ms/req", flush=True)
        summary = summarise(runs)
        text = markdown(summary, args, (load_start, os.getloadavg()[0]), polls, len(received))
    print(text)
    if not args.no_write:
        write_section("observability", text)


if __name__ == "__main__":
    main()
