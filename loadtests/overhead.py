"""Gateway overhead benchmark: the latency and CPU slm-gateway adds, beside LiteLLM's proxy.

At each concurrency (default 10, 50, 100 closed-loop clients, ``--duration`` seconds each) it
measures three paths to the same instant fake upstream:

- ``direct``:  client -> fake upstream
- ``gateway``: client -> slm-gateway (static route, ``openai`` backend) -> fake upstream
- ``litellm``: client -> LiteLLM proxy -> fake upstream (installed once in its own venv)

    python -m loadtests.overhead                  # table; updates docs/benchmarks.md + docs/overhead.png
    python -m loadtests.overhead --json --skip-litellm --duration 5

Every server listens on 127.0.0.1 only; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loadtests import litellm_proxy
from loadtests.overhead_report import console_table, markdown_section, max_rps, verdict, write_png
from loadtests.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
POLICY_TEMPLATE = REPO / "loadtests" / "policies" / "overhead.yaml"
PNG_PATH = REPO / "docs" / "overhead.png"


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str  # ends in /v1
    model: str
    server: ServerProcess  # whose CPU is charged: the proxy, or the fake itself for "direct"


def start_fake(workdir: Path, completion_tokens: int) -> ServerProcess:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "loadtests.fake_upstream",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ttft-ms",
        "0",
        "--tokens-per-s",
        "0",
        "--completion-tokens",
        str(completion_tokens),
    ]
    return ServerProcess(
        "fake upstream",
        command,
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/health",
        log_path=workdir / "fake.log",
        cwd=REPO,
    ).start(timeout=60)


def gateway_policy(workdir: Path, upstream_base_url: str) -> Path:
    policy = yaml.safe_load(POLICY_TEMPLATE.read_text())
    policy["backends"]["fake"]["base_url"] = upstream_base_url
    path = workdir / "overhead-policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def start_gateway(workdir: Path, upstream_base_url: str, workers: int) -> ServerProcess:
    port = free_port()
    policy = gateway_policy(workdir, upstream_base_url)
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--policy",
        str(policy),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    env = {"SLM_GATEWAY_DATA_DIR": str(workdir / "gateway-data")}
    return ServerProcess(
        "slm-gateway",
        command,
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/ready",
        log_path=workdir / "gateway.log",
        env=env,
        cwd=REPO,
    ).start(timeout=180)


def start_litellm(workdir: Path, upstream_base_url: str, version: str) -> ServerProcess:
    cli = litellm_proxy.ensure_litellm(version)
    port = free_port()
    config = litellm_proxy.write_config(
        workdir / "litellm.yaml",
        upstream_base_url=upstream_base_url,
        upstream_model="fake-model",
        public_model="fake",
    )
    return ServerProcess(
        "litellm",
        litellm_proxy.proxy_command(cli, config, port),
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/health/liveliness",
        log_path=workdir / "litellm.log",
        env=litellm_proxy.proxy_env(),
        cwd=workdir,
    ).start(timeout=300)


def run_phase(target: Target, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop load phase in a separate process; returns its figures plus server CPU."""
    command = [
        sys.executable,
        "-m",
        "loadtests.loadgen",
        "--url",
        target.base_url,
        "--model",
        target.model,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--max-tokens",
        str(args.max_tokens),
        *(["--stream"] if args.stream else []),
    ]
    cpu_before = target.server.cpu_seconds()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=args.duration + args.warmup + 120
    )
    cpu_after = target.server.cpu_seconds()
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed for {target.name}: {done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["server_cpu_s"] = cpu_after - cpu_before
    figures["server_cpu_ms_per_req"] = 1000 * figures["server_cpu_s"] / max(1, figures["total_sent"])
    return figures


def add_overhead(results: dict[str, dict[str, Any]]) -> None:
    """Added latency of each proxy over ``direct`` at the same concurrency."""
    direct = results.get("direct", {})
    for target in ("gateway", "litellm"):
        for level, figures in results.get(target, {}).items():
            base = direct.get(level)
            if isinstance(figures, dict) and base and "p50_ms" in figures:
                for key in ("p50", "p95", "p99"):
                    figures[f"added_{key}_ms"] = figures[f"{key}_ms"] - base[f"{key}_ms"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.overhead", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        default="1,10,50,100",
        help="comma-separated client counts (1 shows the unsaturated per-request cost)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--completion-tokens", type=int, default=16, help="tokens the fake answers with")
    parser.add_argument("--stream", action="store_true", help="streamed requests instead of JSON")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument("--litellm-version", default=litellm_proxy.LITELLM_VERSION)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md or the PNG")
    return parser


def start_targets(
    stack: ExitStack, workdir: Path, args: argparse.Namespace, results: dict[str, dict[str, Any]]
) -> list[Target]:
    fake = stack.enter_context(start_fake(workdir, args.completion_tokens))
    upstream = fake.base_url + "/v1"
    targets = [Target("direct", upstream, "fake-model", fake)]
    starters: list[tuple[str, bool, Callable[[], ServerProcess]]] = [
        ("gateway", args.skip_gateway, lambda: start_gateway(workdir, upstream, args.workers)),
        ("litellm", args.skip_litellm, lambda: start_litellm(workdir, upstream, args.litellm_version)),
    ]
    for name, skipped, starter in starters:
        if skipped:
            continue
        try:
            server = stack.enter_context(starter())
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            print(f"{name}: could not start: {exc}", file=sys.stderr)
            results[name] = {"error": str(exc)}
            continue
        targets.append(Target(name, server.base_url + "/v1", "fake", server))
    return targets


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slmgw-overhead-")))
        targets = start_targets(stack, workdir, args, results)
        # Interleave targets within each concurrency level so drifting background load hits all alike.
        for level in levels:
            for target in targets:
                print(f"{target.name}: {level} clients for {args.duration:.0f}s ...", file=sys.stderr)
                try:
                    results.setdefault(target.name, {})[str(level)] = run_phase(target, level, args)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                    results.setdefault(target.name, {})[str(level)] = {"error": str(exc)}
    clean = {
        name: {lvl: f for lvl, f in runs.items() if "p50_ms" in f} if "error" not in runs else runs
        for name, runs in results.items()
    }
    add_overhead(clean)
    meta = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "max_tokens": args.max_tokens,
        "completion_tokens": args.completion_tokens,
        "stream": args.stream,
        "gateway_workers": args.workers,
        "litellm_version": None if args.skip_litellm else args.litellm_version,
        "concurrency": levels,
    }
    if args.json:
        print(json.dumps({**clean, "max_rps": max_rps(clean), "meta": meta}))
    else:
        print(console_table(clean))
        print("max req/s:", {k: round(v) for k, v in max_rps(clean).items()})
        print("\n".join(verdict(clean)))
    if not args.no_write:
        from loadtests.bench_report import machine_line, write_section

        command = "python -m loadtests.overhead " + shlex.join(argv if argv is not None else sys.argv[1:])
        write_png(clean, PNG_PATH)
        write_section(
            "overhead",
            markdown_section(
                clean, command=command.strip(), machine=machine_line(), meta=meta, png_name=PNG_PATH.name
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
