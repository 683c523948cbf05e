"""Closed-loop HTTP load generator: N concurrent asyncio clients, each sending its next request
as soon as the previous one completes, for a fixed duration.

Run as its own process (``python -m loadtests.loadgen ...``) so its CPU is never counted
against the server under test. Prints one JSON object: request counts, latency percentiles
(ms) and throughput over the measured window. Requests started during ``--warmup`` seconds are
sent but not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LoadSpec:
    url: str  # base URL, e.g. http://127.0.0.1:9100/v1
    model: str
    concurrency: int
    duration_s: float
    warmup_s: float = 1.0
    max_tokens: int = 16
    stream: bool = False
    timeout_s: float = 30.0


@dataclass
class LoadResult:
    concurrency: int
    completed: int  # measured window only
    errors: int
    total_sent: int  # warmup included: the denominator for server CPU per request
    duration_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    first_error: str | None


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def request_body(spec: LoadSpec) -> bytes:
    body: dict[str, Any] = {
        "model": spec.model,
        "max_tokens": spec.max_tokens,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
    }
    if spec.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection: the smallest client that reads a whole response.

    Hand-written on asyncio streams because httpx's shared pool, at 50-100 concurrent
    requests, costs more CPU than the servers being measured; each client here owns one
    connection, so there is no pool to contend on.
    """

    def __init__(self, host: str, port: int, path_prefix: str) -> None:
        self.host, self.port, self.path_prefix = host, port, path_prefix
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {self.path_prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = await self._read_chunked()
        else:
            payload = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return status, payload

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()  # the blank line after the last chunk (no trailers sent)
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _one_request(connection: Connection, spec: LoadSpec, body: bytes) -> str | None:
    """Send one request and read it to the end; return an error description or None."""
    status, payload = await connection.post("/chat/completions", body)
    if status != 200:
        return f"HTTP {status}: {payload[:200]!r}"
    if spec.stream and not payload.rstrip().endswith(b"data: [DONE]"):
        return "stream ended without data: [DONE]"
    return None


async def run_load(spec: LoadSpec) -> LoadResult:
    body = request_body(spec)
    url = urlsplit(spec.url)
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    start = time.perf_counter()
    measure_from = start + spec.warmup_s
    deadline = measure_from + spec.duration_s

    async def client_loop() -> None:
        nonlocal sent
        connection = Connection(url.hostname or "127.0.0.1", url.port or 80, url.path.rstrip("/"))
        while True:
            began = time.perf_counter()
            if began >= deadline:
                await connection.close()
                return
            sent += 1
            try:
                error = await asyncio.wait_for(_one_request(connection, spec, body), spec.timeout_s)
            except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                await connection.close()
                await asyncio.sleep(0.01)  # a refused or broken connection must not become a busy loop
            finished = time.perf_counter()
            if began < measure_from or finished > deadline:
                continue
            if error is None:
                latencies.append((finished - began) * 1000)
            else:
                errors.append(error)

    await asyncio.gather(*(client_loop() for _ in range(spec.concurrency)))
    latencies.sort()
    return LoadResult(
        concurrency=spec.concurrency,
        completed=len(latencies),
        errors=len(errors),
        total_sent=sent,
        duration_s=spec.duration_s,
        rps=len(latencies) / spec.duration_s,
        p50_ms=percentile(latencies, 0.50),
        p95_ms=percentile(latencies, 0.95),
        p99_ms=percentile(latencies, 0.99),
        mean_ms=statistics.fmean(latencies) if latencies else 0.0,
        max_ms=latencies[-1] if latencies else 0.0,
        first_error=errors[0] if errors else None,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="OpenAI base URL ending in /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        url=args.url,
        model=args.model,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        max_tokens=args.max_tokens,
        stream=args.stream,
    )
    try:
        import uvloop
    except ImportError:  # the default loop only makes the generator a little slower
        result = asyncio.run(run_load(spec))
    else:
        result = uvloop.run(run_load(spec))
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
