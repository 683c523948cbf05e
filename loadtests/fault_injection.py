"""Fault injection under load: requests keep flowing while the LLM upstream and Redis misbehave.

Bounded and loopback-only: it starts a Redis server (own port, own directory, append-only
file), a fake LLM upstream (``loadtests.fake_upstream``) and a gateway serving the cascade
example policy (``policies/examples/cascade.yaml``) with reliability settings and fallbacks to
the in-process SLM; sends ``--requests`` requests over ``--duration`` seconds while a fixed
schedule kills and restarts the upstream, makes it slow, and restarts Redis; then stops
everything it started and checks:

* every request got an answer or an OpenAI error envelope (no 500, no broken response);
* no traceback in the gateway's log;
* after recovery the store holds exactly one record per request.

    .venv/bin/python -m loadtests.fault_injection --requests 240 --duration 90
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from gateway.accounting.redis_store import RedisRecordStore
from loadtests.bench_report import write_section
from loadtests.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
MODELS = (("cascade", 0.5), ("llm", 0.4), ("slm", 0.1))
LLM_RELIABILITY = {
    "timeouts": {"connect": 0.5, "first_token": 1.5, "total": 15.0, "idle": 2.0},
    "retry": {"max_attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.2},
    "circuit_breaker": {"failure_threshold": 5, "error_rate": 0.5, "window": 20, "cooldown_s": 3.0},
}


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)  # 500s, non-envelope errors, transport failures
    request_ids: list[str] = field(default_factory=list)


class RedisProcess:
    """redis-server on a spare port with an append-only file, so a restart keeps the data."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() \
                != b"PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def upstream_process(port: int, workdir: Path, ttft_ms: float = 0.0) -> ServerProcess:
    command = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port), "--ttft-ms", str(ttft_ms),
               "--completion-tokens", "8", "--models", "fake-llm"]
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


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally, max_tokens: int) -> None:
    model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
    stream = rng.random() < 0.3
    body = {"model": model, "messages": [{"role": "user", "content": f"Name a colour. ({rng.randrange(10**6)})"}],
            "max_tokens": max_tokens, "stream": stream}
    tally.sent += 1
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            data = await response.aread()
    except httpx.HTTPError as exc:
        tally.broken.append(f"{model}: transport {type(exc).__name__}")
        return
    if request_id := response.headers.get("x-slm-gateway-request-id"):
        tally.request_ids.append(request_id)
    if response.status_code != 200:
        try:
            error = orjson.loads(data)["error"]
            kind = f"{response.status_code} {error['code']}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            tally.broken.append(f"{model}: HTTP {response.status_code} without an OpenAI envelope")
            return
        if response.status_code >= 500 and response.status_code not in (502, 503, 504):
            tally.broken.append(f"{model}: {kind}")
        tally.errors[kind] += 1
        return
    if stream:
        events = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            tally.broken.append(f"{model}: stream without [DONE]")
            return
        for event in events[:-1]:
            payload = orjson.loads(event)
            if "error" in payload:
                tally.errors[f"stream {payload['error']['code']}"] += 1
                return
    if fallback := response.headers.get("x-slm-gateway-fallback"):
        tally.fallbacks[f"{model}->{fallback}"] += 1
    tally.answered += 1


async def run_load(base_url: str, requests: int, duration: float, max_tokens: int, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    interval = duration / requests
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base_url, timeout=90, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for index in range(requests):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_request(client, rng, tally, max_tokens)))
        await asyncio.gather(*tasks)


async def run_faults(duration: float, upstream: list[ServerProcess], redis: RedisProcess, port: int,
                     workdir: Path, log: list[str]) -> None:
    """The schedule, as fractions of the run: kill, restart, slow, restore the LLM; restart Redis."""
    start = time.monotonic()

    async def at(fraction: float, label: str) -> None:
        await asyncio.sleep(max(0.0, start + fraction * duration - time.monotonic()))
        log.append(f"t={time.monotonic() - start:5.1f}s {label}")

    def restart(ttft_ms: float) -> None:
        upstream[0].stop()
        upstream[0] = upstream_process(port, workdir, ttft_ms).start()

    await at(0.15, "LLM upstream killed (SIGKILL)")
    if upstream[0].process is not None:
        upstream[0].process.kill()
        upstream[0].process.wait()
    await at(0.32, "LLM upstream restarted")
    await asyncio.to_thread(restart, 0.0)
    await at(0.45, "LLM upstream restarted slow (2.5 s to first token > 1.5 s budget)")
    await asyncio.to_thread(restart, 2500.0)
    await at(0.60, "LLM upstream back to normal")
    await asyncio.to_thread(restart, 0.0)
    await at(0.72, "Redis stopped")
    await asyncio.to_thread(redis.stop)
    await at(0.80, "Redis restarted")
    await asyncio.to_thread(redis.start)


async def count_records(redis_url: str) -> int:
    store = RedisRecordStore(redis_url)
    await store.open()
    try:
        return await store.count_records()
    finally:
        await store.close()


async def wait_records(redis_url: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = await count_records(redis_url)
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        count = await count_records(redis_url)
    return count


def report(args: argparse.Namespace, tally: Tally, schedule: list[str], records: int, tracebacks: int,
           elapsed: float) -> tuple[str, bool]:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(tally.errors.items())) or "none"
    fallbacks = ", ".join(f"{k}: {v}" for k, v in sorted(tally.fallbacks.items())) or "none"
    ok = not tally.broken and tracebacks == 0 and records == tally.sent
    lines = [
        "## Fault injection under load",
        "",
        f"`.venv/bin/python -m loadtests.fault_injection --requests {args.requests} --duration {args.duration:g} "
        f"--max-tokens {args.max_tokens} --seed {args.seed}` — cascade example policy (SLM in-process, LLM = fake "
        "upstream), Redis accounting, fallbacks `cascade -> slm`, `llm -> slm`; 2 shared CPU cores.",
        "",
        "| requests | answered | of which via fallback | OpenAI errors | broken (500 / no envelope / no answer) "
        "| gateway tracebacks | records in store | verdict |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {tally.sent} | {tally.answered} | {sum(tally.fallbacks.values())} | {sum(tally.errors.values())} "
        f"| {len(tally.broken)} | {tracebacks} | {records} | {'PASS' if ok else 'FAIL'} |",
        "",
        f"- fallbacks: {fallbacks}",
        f"- errors by kind: {errors}",
        f"- wall time of the load: {elapsed:.0f} s",
        "- schedule: " + "; ".join(schedule),
    ]
    if tally.broken:
        lines.append(f"- broken: {'; '.join(tally.broken[:10])}")
    return "\n".join(lines), ok


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="slmgw-faults-"))
    redis = RedisProcess(workdir)
    upstream_port, gateway_port = free_port(), free_port()
    upstream: list[ServerProcess] = []
    gateway: ServerProcess | None = None
    try:
        redis.start()
        upstream.append(upstream_process(upstream_port, workdir).start())
        policy_path = workdir / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(build_policy(upstream_port), sort_keys=False))
        gateway = ServerProcess(
            "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy_path),
                        "--host", "127.0.0.1", "--port", str(gateway_port)],
            base_url=f"http://127.0.0.1:{gateway_port}", ready_path="/ready", log_path=workdir / "gateway.log",
            env={"REDIS_URL": redis.url, "SLM_GATEWAY_DATA_DIR": str(workdir / "data"),
                 "SLM_GATEWAY_DRAIN_SECONDS": "30"}, cwd=REPO,
        ).start(timeout=300)
        tally, schedule = Tally(), list[str]()
        started = time.monotonic()
        await asyncio.gather(
            run_load(gateway.base_url, args.requests, args.duration, args.max_tokens, args.seed, tally),
            run_faults(args.duration, upstream, redis, upstream_port, workdir, schedule),
        )
        elapsed = time.monotonic() - started
        records = await wait_records(redis.url, tally.sent, timeout=60)
        gateway.stop()  # drains and flushes the accounting queue
        records = await count_records(redis.url)
        tracebacks = gateway.log_path.read_text(errors="replace").count("Traceback")
        text, ok = report(args, tally, schedule, records, tracebacks, elapsed)
        print(text)
        print(f"(logs in {workdir})")
        if not args.no_report:
            write_section("fault-injection", text)
        return 0 if ok else 1
    finally:
        if gateway is not None:
            gateway.stop()
        for process in upstream:
            process.stop()
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fault_injection", description=__doc__)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds over which requests are sent")
    parser.add_argument("--max-tokens", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-report", action="store_true", help="do not update docs/benchmarks.md")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
