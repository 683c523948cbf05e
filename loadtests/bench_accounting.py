"""Added latency of accounting on a request path: finalize + submit, on vs off.

Each "request" builds its record (not timed: the app builds it whether accounting is on or
not), then the timed part runs what the request path pays for accounting: ``finalize_record``
and ``await accounting.submit(record)``. "off" times an await of a no-op sink (no finalize).
Between requests the loop yields, so the background writer competes for the event loop as
it would in the gateway. Also reported: how fast the writer drains (records/s, end to end
into the store).

    .venv/bin/python -m loadtests.bench_accounting [--requests 20000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from gateway.accounting.finalize import finalize_record
from gateway.accounting.redis_store import RedisRecordStore
from gateway.accounting.service import AccountingService, build_accounting
from gateway.core.config import Price
from gateway.core.record import CallRecord, RequestRecord
from loadtests.bench_report import machine_line, write_section

SLM_PRICE = Price(input_per_1m=0.1, output_per_1m=0.2)
LLM_PRICE = Price(input_per_1m=2.5, output_per_1m=10.0)


class NoAccounting:
    async def submit(self, record: RequestRecord) -> None:
        return None


def cascade_record() -> RequestRecord:
    now = time.time()
    record = RequestRecord(
        request_id=f"req-{uuid.uuid4().hex}", public_model="auto", endpoint="chat", stream=True,
        route="slm>llm", latency_ms=420.0, ttft_ms=95.0, escalated=True, confidence=0.41,
    )
    record.calls = [
        CallRecord(backend="slm", model="smollm2", started_at=now, prompt_tokens=120, completion_tokens=40,
                   cost_usd=SLM_PRICE.cost(120, 40), latency_ms=80.0, ttft_ms=12.0, used=False),
        CallRecord(backend="llm", model="gpt", started_at=now, prompt_tokens=118, completion_tokens=60,
                   cost_usd=LLM_PRICE.cost(118, 60), latency_ms=330.0, ttft_ms=90.0),
    ]
    return record


async def time_path(sink: AccountingService | NoAccounting, requests: int) -> list[float]:
    samples: list[float] = []
    accounting_on = isinstance(sink, AccountingService)
    for _ in range(requests):
        record = cascade_record()
        started = time.perf_counter_ns()
        if accounting_on:
            finalize_record(record, LLM_PRICE)
        await sink.submit(record)
        samples.append((time.perf_counter_ns() - started) / 1e6)
        await asyncio.sleep(0)  # let the writer run, as other requests' awaits would
    return samples


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_mode(name: str, requests: int, redis_url: str | None) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory(prefix="bench-accounting-") as data_dir:
        sink: AccountingService | NoAccounting
        if name == "off":
            sink = NoAccounting()
        else:
            sink = build_accounting(redis_url if name == "redis" else None, Path(data_dir), 1_000_000,
                                    redis_prefix=f"bench-{uuid.uuid4().hex[:8]}:", queue_size=requests + 10)
            await sink.start()
        await time_path(sink, min(500, requests))  # warm-up (imports, connections, scripts)
        began = time.perf_counter()
        samples = await time_path(sink, requests)
        drained = True
        if isinstance(sink, AccountingService):
            drained = await sink.wait_idle(timeout_s=300)
            elapsed = time.perf_counter() - began
            if isinstance(sink.store, RedisRecordStore):
                await sink.store.delete_all()
            await sink.close()
        else:
            elapsed = time.perf_counter() - began
        return {
            "mode": name,
            "p50_ms": statistics.median(samples),
            "p99_ms": quantile(samples, 0.99),
            "mean_ms": statistics.fmean(samples),
            "records_per_s": requests / elapsed if drained else float("nan"),
        }


async def main_async(requests: int, redis_url: str | None) -> list[dict[str, float | str]]:
    modes = ["off", "embedded"] + (["redis"] if redis_url else [])
    return [await run_mode(mode, requests, redis_url) for mode in modes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    args = parser.parse_args()
    results = asyncio.run(main_async(args.requests, args.redis_url or None))
    off = float(results[0]["p50_ms"])
    lines = [
        "## Accounting on the request path",
        "",
        f"Machine: {machine_line()}. {args.requests} requests per mode (cascade record, 2 calls); timed:",
        "`finalize_record` + `await accounting.submit(record)`. Added p50 = mode p50 - off p50.",
        "Target: < 0.2 ms added at p50. records/s: submit until the writer has stored everything.",
        "",
        "| mode | p50 ms | p99 ms | mean ms | added p50 ms | records/s end to end |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        p50 = float(row["p50_ms"])
        lines.append(
            f"| {row['mode']} | {p50:.4f} | {float(row['p99_ms']):.4f} | {float(row['mean_ms']):.4f} "
            f"| {p50 - off:.4f} | {float(row['records_per_s']):,.0f} |"
        )
    lines += ["", f"Reproduce: `.venv/bin/python -m loadtests.bench_accounting --requests {args.requests}`"]
    text = "\n".join(lines)
    print(text)
    write_section("accounting", text)


if __name__ == "__main__":
    main()
