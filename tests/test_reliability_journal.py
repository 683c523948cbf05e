"""Issue 18, defect 5: a request's record is durable before its answer completes.

A real gateway process with a virtual key on a private Redis (this test kills it) and a slow
fake upstream, under continuous load (streamed and not):

1. Redis up: the gateway is SIGKILLed mid-load and restarted;
2. Redis down: Redis is killed while answers are still streaming, then the gateway is
   SIGKILLed too; Redis and the gateway are restarted.

Afterwards every answered request (a complete JSON answer, or a stream that reached
``[DONE]``) has exactly one record, and the key's spend equals the sum of its records' cost,
to the nano-dollar — the journal replayed what the dead processes had not stored or settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from loadtests.ledger import Ledger, read_ledger
from loadtests.redis_server import RedisServer
from tests.gateway_process import GatewayProcess
from tests.test_keys_support import ADMIN_KEY, create_key, priced_policy

CONCURRENCY = 24


@dataclass
class Answers:
    answered: list[str] = field(default_factory=list)  # request ids of complete answers
    other: Counter[str] = field(default_factory=Counter)  # why the rest were not answers


async def _one(client: httpx.AsyncClient, url: str, secret: str, stream: bool, answers: Answers) -> None:
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "stream": stream}
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"authorization": f"Bearer {secret}"}) as response:
            data = await response.aread()
    except httpx.HTTPError as exc:
        answers.other[type(exc).__name__] += 1  # the gateway died under it: not an answer
        await asyncio.sleep(0.05)  # it is restarting: do not spin
        return
    complete = response.status_code == 200 and (
        data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data if stream
        else bool(orjson.loads(data).get("choices")))
    if complete:
        answers.answered.append(response.headers["x-slm-gateway-request-id"])
    else:
        answers.other[f"{response.status_code} {data[:80]!r}"] += 1


async def _load(url: str, secret: str, stop: asyncio.Event, answers: Answers, seed: int) -> None:
    rng = random.Random(seed)

    async def worker() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                await _one(client, url, secret, rng.random() < 0.6, answers)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _answered(answers: Answers, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` more answers completed (progress, not wall time: the box may be busy)."""
    target = len(answers.answered) + count
    deadline = time.monotonic() + timeout
    while len(answers.answered) < target and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _faults(stop: asyncio.Event, answers: Answers, steps: list[tuple[int, Callable[[], None]]]) -> None:
    """Run each kill once ``count`` more answers completed; then stop the load shortly after."""
    for count, kill in steps:
        await _answered(answers, count)
        await asyncio.to_thread(kill)
    await asyncio.sleep(0.5)
    stop.set()


def _settled_ledger(redis_url: str, key_id: str, answered: list[str], timeout: float = 45.0) -> Ledger:
    deadline = time.monotonic() + timeout
    ledger = read_ledger(redis_url, [key_id])
    while (ledger.missing(answered) or not ledger.spend_matches(key_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
        ledger = read_ledger(redis_url, [key_id])
    return ledger


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="slmgw-journal-") as path:
        yield Path(path)


async def test_sigkill_with_redis_up_and_down_loses_no_answered_record(workdir: Path) -> None:
    redis = RedisServer(workdir).start()
    try:
        with serve_in_thread(FakeConfig(completion_tokens=12, tokens_per_s=30)) as (upstream, _app):
            gateway = GatewayProcess(priced_policy(upstream), name="journal",
                                     env={"REDIS_URL": redis.url, "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY})
            try:
                gateway.start(timeout=60)
                created = create_key(gateway.url, budget_usd=1000.0)
                key_id, secret = str(created["id"]), str(created["key"])
                answers = Answers()
                # 1. Redis up: SIGKILL the gateway mid-load.
                stop = asyncio.Event()
                await asyncio.gather(_load(gateway.url, secret, stop, answers, seed=1),
                                     _faults(stop, answers, [(40, lambda: gateway.stop(kill=True))]))
                killed_with_redis_up = len(answers.answered)
                gateway.start(timeout=60)
                # 2. Redis down: kill Redis while answers stream; once some of the requests admitted
                # before it finished (their settlement cannot reach Redis), kill the gateway too.
                stop = asyncio.Event()
                await asyncio.gather(_load(gateway.url, secret, stop, answers, seed=2),
                                     _faults(stop, answers, [(30, redis.kill), (5, lambda: gateway.stop(kill=True))]))
                redis.start()
                gateway.start(timeout=60)
                ledger = _settled_ledger(redis.url, key_id, answers.answered)
            finally:
                gateway.stop()
    finally:
        redis.stop()
    assert killed_with_redis_up > 0 and len(answers.answered) > killed_with_redis_up, answers.other  # both phases
    assert ledger.missing(answers.answered) == [], f"{len(ledger.missing(answers.answered))} answered, no record"
    assert ledger.duplicated() == []
    assert ledger.spent_nano[key_id] == ledger.record_nano[key_id] > 0, ledger
    with contextlib.suppress(FileNotFoundError):
        leftovers = [p for p in (gateway.workdir / "data" / "journal").glob("*.jsonl") if p.stat().st_size]
        assert len(leftovers) <= 1  # only the last (stopped) process's own segment, if anything
