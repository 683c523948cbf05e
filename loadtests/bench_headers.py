"""Which HTTP protocol keeps other clients fast while one client sends a huge header?

Three ways to serve the same gateway app (static route to the instant fake upstream, auth off):

* ``httptools``: uvicorn's default parser, no header limit (the issue's stall);
* ``h11``: uvicorn's pure-Python parser with ``h11_max_incomplete_event_size`` = 64 KiB
  (it answers 400 for an oversized head);
* ``limited``: ``slm-gateway serve`` — :class:`gateway.http_protocol.LimitedHttpToolsProtocol`
  (httptools behind a byte count: 431, 414, 408).

For each, a probe client calls ``GET /health`` one request at a time, first alone and then while
another client sends a 64 MiB header; reported: probe requests completed, p50 / max latency,
and what the attacker got back. Then a closed-loop load of chat requests measures what each
protocol costs normally (p50 and server CPU per request). Servers are started one at a time.

    .venv/bin/python -m loadtests.bench_headers [--size-mib 64] [--duration 6]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_report import machine_line, write_section
from loadtests.overhead import Target, gateway_policy, run_phase, start_fake
from loadtests.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
MODES = ("httptools", "h11", "limited")


def start_server(mode: str, workdir: Path, upstream: str) -> ServerProcess:
    port = free_port()
    policy = gateway_policy(workdir, upstream)
    if mode == "limited":
        command = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy), "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "uvicorn", "gateway.asgi:create_app", "--factory", "--host", "127.0.0.1",
                   "--port", str(port), "--http", mode, "--log-level", "warning", "--no-access-log"]
        if mode == "h11":
            command += ["--h11-max-incomplete-event-size", str(64 * 1024)]
    env = {"SLM_GATEWAY_POLICY": str(policy), "SLM_GATEWAY_DATA_DIR": str(workdir / f"data-{mode}"),
           "OMP_NUM_THREADS": "1"}
    return ServerProcess(mode, command, base_url=f"http://127.0.0.1:{port}", ready_path="/ready",
                         log_path=workdir / f"{mode}.log", env=env, cwd=REPO).start(timeout=120)


def attack(port: int, size: int, outcome: dict[str, Any]) -> None:
    piece = b"a" * (1 << 20)
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-huge: ")
            for _ in range(size // len(piece)):
                sock.sendall(piece)
            sock.sendall(b"\r\n\r\n")
            outcome["reply"] = sock.recv(100).decode("latin-1").split("\r\n")[0] or "closed"
    except OSError as exc:
        outcome["reply"] = f"closed ({type(exc).__name__})"
    outcome["seconds"] = time.perf_counter() - started


def probe(base_url: str, seconds: float | None, stop: threading.Event | None = None) -> list[float]:
    """Sequential GET /health latencies (ms) for ``seconds``, or until ``stop`` is set."""
    latencies: list[float] = []
    deadline = time.monotonic() + (seconds or 600.0)
    with httpx.Client(base_url=base_url, timeout=120) as client:
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            began = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def under_attack(server: ServerProcess, size: int) -> tuple[list[float], dict[str, Any]]:
    port = int(server.base_url.rsplit(":", 1)[1])
    outcome: dict[str, Any] = {}
    stop = threading.Event()
    attacker = threading.Thread(target=attack, args=(port, size, outcome))
    results: list[list[float]] = []
    prober = threading.Thread(target=lambda: results.append(probe(server.base_url, None, stop)))
    prober.start()
    time.sleep(0.5)  # the probe runs before the attack starts, and throughout it
    attacker.start()
    attacker.join()
    time.sleep(0.5)
    stop.set()
    prober.join()
    return results[0], outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_headers", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of each load phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    args.max_tokens, args.stream = 16, False
    rows = ["| protocol | probe alone: p50 / max ms | probe during the attack: requests, p50 / max ms | attacker got "
            "(after s) | chat load: p50 ms, server CPU ms/req |", "|---|---|---|---|---|"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="slmgw-headers-") as tmp:
        workdir = Path(tmp)
        fake = start_fake(workdir, 16)
        try:
            for mode in MODES:
                server = start_server(mode, workdir, fake.base_url + "/v1")
                try:
                    alone = sorted(probe(server.base_url, 3.0))
                    during, outcome = under_attack(server, args.size_mib << 20)
                    during.sort()
                    load = run_phase(Target(mode, server.base_url + "/v1", "fake", server), args.concurrency, args)
                finally:
                    server.stop()
                row = (f"| {mode} | {statistics.median(alone):.1f} / {alone[-1]:.1f} | {len(during)}, "
                       f"{statistics.median(during):.1f} / {during[-1]:.1f} | {outcome['reply']} "
                       f"({outcome['seconds']:.1f} s) | {load['p50_ms']:.1f}, {load['server_cpu_ms_per_req']:.3f} |")
                print(row, flush=True)
                rows.append(row)
        finally:
            fake.stop()
    text = "\n".join([
        "## Huge headers: which parser keeps other clients fast",
        "",
        f"`.venv/bin/python -m loadtests.bench_headers --size-mib {args.size_mib} --duration {args.duration:g}` — "
        f"{machine_line()}; load average {load_before:.1f} at the start (shared box). One server at a time, the "
        "gateway app with a static route to the instant fake upstream; a probe client sends `GET /health` one at a "
        f"time, alone for 3 s, then while another client sends one {args.size_mib} MiB header to `/health`; the "
        f"chat load is {args.concurrency} closed-loop clients for {args.duration:g} s (non-streamed, max_tokens 16).",
        "",
        *rows,
    ])
    print(text)
    if not args.no_report:
        write_section("headers", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
