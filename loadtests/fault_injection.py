"""Fault injection under load: nothing answered is lost, and spend always equals the records.

Bounded and loopback-only. It starts a private Redis (own port and directory, fsynced AOF), a
fake LLM upstream (``loadtests.fake_upstream``) and a gateway serving the cascade example
policy (SLM in-process, LLM = the fake, fallbacks to the SLM) with auth on; every request uses
one virtual key. While ``--requests`` requests flow over ``--duration`` seconds, one schedule
(fractions of the run) injects, in this order:

* the LLM upstream SIGKILLed, restarted, made slow (beyond its first-token budget), restored;
* the **gateway SIGKILLed** and restarted;
* a burst of ``--burst`` (250) concurrent requests at once;
* a **64 MiB header** client and a slowloris client (the gateway must refuse both, 431 / 408);
* **Redis SIGKILLed, then the gateway SIGKILLed while Redis is down**; both restarted.

Then it waits for the journal to be replayed, stops everything it started and checks: no
broken answer (500, no envelope, a stream without ``[DONE]`` outside a kill), every answered
request has exactly one record, and the key's spend equals the sum of its records' cost to the
nano-dollar. It prints the tally and PASS / FAIL (exit 1 on FAIL).

    .venv/bin/python -m loadtests.fault_injection --requests 400 --duration 90
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.bench_report import write_section
from loadtests.fault_clients import Tally, huge_header, one_request, slowloris
from loadtests.ledger import read_ledger
from loadtests.processes import ServerProcess, free_port
from loadtests.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
MODELS = (("cascade", 0.3), ("llm", 0.6), ("slm", 0.1))
ADMIN_KEY = "fault-admin-" + "5f" * 8
LLM_RELIABILITY = {
    "timeouts": {"connect": 0.5, "first_token": 1.5, "total": 15.0, "idle": 2.0},
    "retry": {"max_attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.2},
    "circuit_breaker": {"failure_threshold": 5, "error_rate": 0.5, "window": 20, "cooldown_s": 3.0},
}


def upstream_process(port: int, workdir: Path, ttft_ms: float = 0.0) -> ServerProcess:
    command = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port), "--ttft-ms", str(ttft_ms),
               "--completion-tokens", "8", "--tokens-per-s", "80", "--models", "fake-llm"]
    return ServerProcess("fake-llm", command, base_url=f"http://127.0.0.1:{port}", ready_path="/health",
                         log_path=workdir / "upstream.log", cwd=REPO)


def build_policy(upstream_port: int) -> dict[str, Any]:
    policy: dict[str, Any] = yaml.safe_load((REPO / "policies/examples/cascade.yaml").read_text())
    llm = policy["backends"]["llm"]
    for key in ("base_url_env", "model_env", "api_key_env"):
        llm.pop(key, None)
    llm.update({"base_url": f"http://127.0.0.1:{upstream_port}/v1", "model": "fake-llm", **LLM_RELIABILITY})
    policy["fallbacks"] = {"cascade": ["slm"], "llm": ["slm"]}
    return policy


@dataclass
class Run:
    """The processes of one run; the gateway is replaced on every restart."""

    workdir: Path
    redis: RedisServer
    policy_path: Path
    gateway_port: int
    upstream_port: int
    upstream: ServerProcess | None = None
    gateway: ServerProcess | None = None

    def start_gateway(self) -> None:
        self.gateway = ServerProcess(
            "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(self.policy_path),
                        "--host", "127.0.0.1", "--port", str(self.gateway_port)],
            base_url=f"http://127.0.0.1:{self.gateway_port}", ready_path="/ready",
            log_path=self.workdir / "gateway.log",
            env={"REDIS_URL": self.redis.url, "SLM_GATEWAY_DATA_DIR": str(self.workdir / "data"),
                 "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "SLM_GATEWAY_DRAIN_SECONDS": "30",
                 "SLM_GATEWAY_HEADER_TIMEOUT_S": "3", "OMP_NUM_THREADS": "1", "SLM_GATEWAY_THREADS": "1"},
            cwd=REPO,
        ).start(timeout=300)

    def kill_gateway(self) -> None:
        if self.gateway is not None and self.gateway.process is not None:
            self.gateway.process.kill()
            self.gateway.process.wait(timeout=30)

    def restart_upstream(self, ttft_ms: float) -> None:
        if self.upstream is not None:
            self.upstream.stop()
        self.upstream = upstream_process(self.upstream_port, self.workdir, ttft_ms).start()

    def stop_all(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.upstream is not None:
            self.upstream.stop()
        self.redis.stop()


async def run_load(run: Run, args: argparse.Namespace, secret: str, tally: Tally) -> None:
    rng = random.Random(args.seed)
    interval = args.duration / args.requests
    limits = httpx.Limits(max_connections=args.burst + 50, max_keepalive_connections=args.burst + 50)
    headers = {"authorization": f"Bearer {secret}"}
    base = f"http://127.0.0.1:{run.gateway_port}"
    async with httpx.AsyncClient(base_url=base, timeout=90, limits=limits, headers=headers) as client:
        start = time.monotonic()
        tasks = []
        for index in range(args.requests):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
            tasks.append(asyncio.create_task(one_request(client, rng, tally, model, args.max_tokens)))
        await asyncio.gather(*tasks)


async def run_faults(run: Run, args: argparse.Namespace, secret: str, tally: Tally) -> None:
    start = time.monotonic()
    base = f"http://127.0.0.1:{run.gateway_port}"

    async def at(fraction: float, label: str) -> None:
        await asyncio.sleep(max(0.0, start + fraction * args.duration - time.monotonic()))
        tally.schedule.append(f"t={time.monotonic() - start:5.1f}s {label}")

    async def kill_and_restart_gateway() -> None:
        tally.kill_started()
        await asyncio.to_thread(run.kill_gateway)
        await asyncio.to_thread(run.start_gateway)
        tally.kill_ended()

    await at(0.08, "LLM upstream killed (SIGKILL)")
    if run.upstream is not None and run.upstream.process is not None:
        run.upstream.process.kill()
        run.upstream.process.wait()
    await at(0.16, "LLM upstream restarted")
    await asyncio.to_thread(run.restart_upstream, 0.0)
    await at(0.22, "LLM upstream restarted slow (2.5 s to first token > 1.5 s budget)")
    await asyncio.to_thread(run.restart_upstream, 2500.0)
    await at(0.30, "LLM upstream back to normal")
    await asyncio.to_thread(run.restart_upstream, 0.0)
    await at(0.38, "gateway SIGKILLed mid-load (then restarted)")
    await kill_and_restart_gateway()
    tally.schedule.append(f"t={time.monotonic() - start:5.1f}s gateway ready again")
    await at(0.55, f"burst: {args.burst} concurrent requests; a 64 MiB header and a slowloris client")
    limits = httpx.Limits(max_connections=args.burst, max_keepalive_connections=args.burst)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits,
                                 headers={"authorization": f"Bearer {secret}"}) as client:
        rng = random.Random(args.seed + 1)
        burst = [one_request(client, rng, tally, "llm", args.max_tokens, burst=True) for _ in range(args.burst)]
        attackers = [asyncio.to_thread(huge_header, run.gateway_port, 64 << 20, tally),
                     asyncio.to_thread(slowloris, run.gateway_port, 12.0, tally)]
        await asyncio.gather(*burst, *attackers)
    await at(0.75, "Redis SIGKILLed")
    tally.kill_started()
    await asyncio.to_thread(run.redis.kill)
    await at(0.78, "gateway SIGKILLed while Redis is down")
    await asyncio.to_thread(run.kill_gateway)
    await at(0.84, "Redis restarted, then the gateway")
    await asyncio.to_thread(run.redis.start)
    await asyncio.to_thread(run.start_gateway)
    tally.kill_ended()


def create_key(base_url: str) -> tuple[str, str]:
    response = httpx.post(f"{base_url}/v1/gateway/keys", json={"name": "fault-injection", "budget_usd": 10_000},
                          headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    response.raise_for_status()
    created = response.json()
    return str(created["id"]), str(created["key"])


def report(args: argparse.Namespace, tally: Tally, ledger: Any, key_id: str, tracebacks: int,
           elapsed: float) -> tuple[str, bool]:
    missing = ledger.missing(tally.answered_ids)
    duplicated = ledger.duplicated()
    spent, recorded = ledger.spent_nano.get(key_id, 0), ledger.record_nano.get(key_id, 0)
    headers_ok = tally.header_refused and tally.slowloris_refused
    ok = (not tally.broken and not missing and not duplicated and spent == recorded and tracebacks == 0
          and headers_ok and tally.answered > 0)
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(tally.errors.items())) or "none"
    fives = tally.fives
    lines = [
        "## Fault injection under load",
        "",
        f"`.venv/bin/python -m loadtests.fault_injection --requests {args.requests} --duration {args.duration:g} "
        f"--burst {args.burst} --max-tokens {args.max_tokens} --seed {args.seed}` — cascade example policy (SLM "
        "in-process, LLM = fake upstream at 80 tokens/s), private Redis (keys and records, fsynced AOF), journal on, "
        "auth on: every request uses one virtual key; fallbacks `cascade -> slm`, `llm -> slm`; loopback only; "
        "2 shared CPU cores, `OMP_NUM_THREADS=1`.",
        "",
        "| sent | answered | clean errors (envelope) | of which 5xx (502/503/504) | cut by a SIGKILL | refused while "
        "the gateway was down | broken | answered without a record | duplicate records | spend (nano-USD) | "
        "records' cost (nano-USD) | verdict |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {tally.sent} | {tally.answered} | {sum(tally.errors.values())} | {fives} | {tally.cut} | {tally.down} "
        f"| {len(tally.broken)} | {len(missing)} | {len(duplicated)} | {spent:,} | {recorded:,} "
        f"| {'PASS' if ok else 'FAIL'} |",
        "",
        f"- burst of {args.burst} concurrent: {tally.burst_answered} answered, {tally.burst_other} other "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(tally.burst_kinds.items())) or 'none'})",
        f"- 64 MiB header: {tally.header_reply}; slowloris: {tally.slowloris_reply}",
        f"- fallbacks: {', '.join(f'{k}: {v}' for k, v in sorted(tally.fallbacks.items())) or 'none'}",
        f"- clean errors by kind: {errors}",
        f"- gateway tracebacks in its log: {tracebacks}; wall time of the load: {elapsed:.0f} s",
        "- schedule: " + "; ".join(tally.schedule),
    ]
    if tally.broken:
        lines.append(f"- broken: {'; '.join(tally.broken[:10])}")
    if missing:
        lines.append(f"- answered without a record (first 5): {', '.join(missing[:5])}")
    return "\n".join(lines), ok


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="slmgw-faults-"))
    run = Run(workdir, RedisServer(workdir), workdir / "policy.yaml", free_port(), free_port())
    try:
        run.redis.start()
        run.restart_upstream(0.0)
        run.policy_path.write_text(yaml.safe_dump(build_policy(run.upstream_port), sort_keys=False))
        run.start_gateway()
        key_id, secret = create_key(f"http://127.0.0.1:{run.gateway_port}")
        tally = Tally()
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(run_load(run, args, secret, tally), run_faults(run, args, secret, tally)),
                               timeout=args.duration * 3 + 300)
        elapsed = time.monotonic() - started
        ledger = await asyncio.to_thread(settled_ledger, run.redis.url, key_id, tally.answered_ids, 90.0)
        if run.gateway is not None:
            run.gateway.stop()  # drains and flushes
        ledger = read_ledger(run.redis.url, [key_id])
        tracebacks = (workdir / "gateway.log").read_text(errors="replace").count("Traceback")
        text, ok = report(args, tally, ledger, key_id, tracebacks, elapsed)
        print(text)
        print(f"(logs in {workdir})")
        if not args.no_report:
            write_section("fault-injection", text)
        return 0 if ok else 1
    finally:
        run.stop_all()


def settled_ledger(redis_url: str, key_id: str, answered: list[str], timeout: float) -> Any:
    """Poll until every answered request has its record and the spend equals them (or time is up)."""
    deadline = time.monotonic() + timeout
    ledger = read_ledger(redis_url, [key_id])
    while (ledger.missing(answered) or not ledger.spend_matches(key_id)) and time.monotonic() < deadline:
        time.sleep(1.0)
        ledger = read_ledger(redis_url, [key_id])
    return ledger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fault_injection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="steady requests over --duration")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds over which requests are sent")
    parser.add_argument("--burst", type=int, default=250, help="concurrent requests sent at once mid-run")
    parser.add_argument("--max-tokens", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-report", action="store_true", help="do not update docs/benchmarks.md")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
