"""A fast fake OpenAI-compatible upstream for load tests, overhead benchmarks and privacy tests.

A raw ASGI app (no framework) so that, when the gateway's overhead is measured against it, the
fake itself costs as little CPU as possible. Knobs: time to first token, tokens per second,
completion length, 5xx error rate. Serves POST /v1/chat/completions and /v1/completions (stream
and non-stream, usage included, ``stream_options.include_usage`` honoured, logprobs when asked),
POST /v1/embeddings, GET /v1/models, GET /health. Chat requests with tools, a response_format
or a refusal marker get scripted agent answers (``loadtests.fake_agent_payloads``).
With ``record`` on it keeps every request (path, headers, body):
GET /_recorded returns them, DELETE /_recorded clears them, and ``--record FILE`` appends JSONL.

    python -m loadtests.fake_upstream --port 9100 --ttft-ms 0 --tokens-per-s 0   # 0 = instant
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtests.fake_agent_payloads import agent_full, agent_plan, agent_stream, embeddings_response
from loadtests.fake_payloads import error_body, full_response, models_body, plan_generation, stream_events

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONFIG_ENV = "FAKE_UPSTREAM_CONFIG"  # JSON FakeConfig handed to worker processes
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass(frozen=True)
class FakeConfig:
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0 = all tokens at once
    completion_tokens: int = 16
    error_rate: float = 0.0  # fraction of generation requests answered with error_status
    error_status: int = 500
    models: tuple[str, ...] = ("fake-model",)
    record: bool = False
    record_file: str | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, text: str) -> FakeConfig:
        data = orjson.loads(text)
        data["models"] = tuple(data.get("models") or cls.models)
        return cls(**data)

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()


@dataclass
class FakeUpstream:
    """The ASGI application. State (counters, recordings, RNG) lives on the instance."""

    config: FakeConfig
    recorded: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.config.seed is not None:
            self._rng.seed(self.config.seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            await self._generate("chat", scope, receive, send)
        elif method == "POST" and path in ("/v1/completions", "/completions"):
            await self._generate("completion", scope, receive, send)
        elif method == "POST" and path in ("/v1/embeddings", "/embeddings"):
            await self._generate("embeddings", scope, receive, send)
        elif method == "GET" and path in ("/v1/models", "/models"):
            await _respond(send, 200, models_body(self.config.models, int(time.time())))
        elif method == "GET" and path in ("/health", "/ready"):
            await _respond(send, 200, b'{"status":"ok"}')
        elif path == "/_recorded" and method == "GET":
            await _respond(send, 200, orjson.dumps(self.recorded))
        elif path == "/_recorded" and method == "DELETE":
            self.recorded.clear()
            await _respond(send, 200, b'{"cleared":true}')
        else:
            await _respond(send, 404, error_body(404, f"no route {method} {path}", "not_found_error"))

    async def _generate(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except (orjson.JSONDecodeError, ValueError) as exc:
            await _respond(send, 400, error_body(400, f"invalid JSON body: {exc}", "invalid_request_error"))
            return
        if self.config.record:
            self._record(scope, body)
        cfg = self.config
        if cfg.error_rate > 0 and self._rng.random() < cfg.error_rate:
            injected = error_body(cfg.error_status, "fake upstream injected error")
            await _respond(send, cfg.error_status, injected)
            return
        if kind == "embeddings":
            try:
                await _respond(send, 200, orjson.dumps(embeddings_response(body)))
            except (ValueError, TypeError) as exc:
                await _respond(send, 400, error_body(400, str(exc), "invalid_request_error"))
            return
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        plan = agent_plan(body) if kind == "chat" and (body.get("tools") or body.get("response_format")
                                                       or "REFUSE" in raw.decode(errors="replace")) else None
        if plan is not None:  # tools, structured output, refusal: scripted (loadtests.fake_agent_payloads)
            response_id = f"{prefix}-fake{next(self._ids)}"
            if not body.get("stream"):
                await _respond(send, 200, orjson.dumps(agent_full(plan, body, response_id, int(time.time()))))
                return
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            events = b"".join(agent_stream(plan, body, response_id, int(time.time())))
            await send({"type": "http.response.body", "body": events, "more_body": False})
            return
        gen = plan_generation(kind, body, response_id=f"{prefix}-fake{next(self._ids)}",
                              created=int(time.time()), completion_tokens=cfg.completion_tokens)
        if not body.get("stream"):
            paced = len(gen.tokens) / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
            if cfg.ttft_ms > 0 or paced > 0:
                await asyncio.sleep(cfg.ttft_ms / 1000 + paced)
            await _respond(send, 200, orjson.dumps(full_response(gen)))
            return
        await self._stream(gen, send)

    async def _stream(self, gen: Any, send: Send) -> None:
        cfg = self.config
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        events = stream_events(gen)
        try:
            if cfg.ttft_ms <= 0 and cfg.tokens_per_s <= 0:
                # Instant mode: one write instead of one per event keeps the fake's CPU per request low.
                whole = b"".join(event for _, event in events)
                await send({"type": "http.response.body", "body": whole, "more_body": True})
            else:
                interval = 1.0 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
                first, seen_token = True, False
                for is_token, event in events:
                    if first:
                        if cfg.ttft_ms > 0:
                            await asyncio.sleep(cfg.ttft_ms / 1000)
                        first = False
                    elif is_token and seen_token and interval:
                        await asyncio.sleep(interval)
                    seen_token = seen_token or is_token
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # client went away mid-stream; nothing to clean up

    def _record(self, scope: Scope, body: dict[str, Any]) -> None:
        entry = {"path": scope["path"],
                 "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])},
                 "body": body}
        self.recorded.append(entry)
        if self.config.record_file:
            with open(self.config.record_file, "ab") as handle:
                handle.write(orjson.dumps(entry) + b"\n")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_fake_app(config: FakeConfig | None = None) -> FakeUpstream:
    return FakeUpstream(config or FakeConfig())


def app_from_env() -> FakeUpstream:
    """uvicorn factory for ``--workers > 1``: each worker process rebuilds the app from the env."""
    return build_fake_app(FakeConfig.from_json(os.environ.get(CONFIG_ENV, "{}")))


@contextmanager
def serve_in_thread(config: FakeConfig | None = None, host: str = "127.0.0.1",
                    port: int = 0) -> Iterator[tuple[str, FakeUpstream]]:
    """Run the fake in a background thread of this process; yields (base URL without /v1, app)."""
    import socket

    import uvicorn

    app = build_fake_app(config)
    sock = socket.socket()
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake upstream did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m loadtests.fake_upstream",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env("FAKE_UPSTREAM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("FAKE_UPSTREAM_PORT", "9100")))
    parser.add_argument("--ttft-ms", type=float, default=_env_float("FAKE_UPSTREAM_TTFT_MS", 0.0))
    parser.add_argument("--tokens-per-s", type=float, default=_env_float("FAKE_UPSTREAM_TOKENS_PER_S", 0.0),
                        help="streaming pace; 0 = every token at once")
    parser.add_argument("--completion-tokens", type=int,
                        default=int(env("FAKE_UPSTREAM_COMPLETION_TOKENS", "16")),
                        help="tokens per answer (fewer when the request's max_tokens is lower)")
    parser.add_argument("--error-rate", type=float, default=_env_float("FAKE_UPSTREAM_ERROR_RATE", 0.0))
    parser.add_argument("--error-status", type=int, default=int(env("FAKE_UPSTREAM_ERROR_STATUS", "500")))
    parser.add_argument("--models", default=env("FAKE_UPSTREAM_MODELS", "fake-model"),
                        help="comma-separated ids listed by GET /v1/models")
    parser.add_argument("--record", metavar="FILE", default=env("FAKE_UPSTREAM_RECORD"),
                        help="record requests: append JSONL to FILE (and keep them for GET /_recorded)")
    parser.add_argument("--record-memory", action="store_true", help="record in memory only (GET /_recorded)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (recordings are per worker)")
    parser.add_argument("--log-level", default="warning")
    return parser


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    if not 0.0 <= args.error_rate <= 1.0:
        raise SystemExit("--error-rate must be within [0, 1]")
    return FakeConfig(
        ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, completion_tokens=args.completion_tokens,
        error_rate=args.error_rate, error_status=args.error_status,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        record=bool(args.record or args.record_memory), record_file=args.record, seed=args.seed,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": args.log_level,
                              "access_log": False, "lifespan": "on"}
    if args.workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run("loadtests.fake_upstream:app_from_env", factory=True, workers=args.workers, **common)
    else:
        uvicorn.run(build_fake_app(config), **common)


if __name__ == "__main__":
    main()
