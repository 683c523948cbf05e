"""The clients of the fault-injection run and how their outcomes are tallied.

An outcome is one of: **answered** (200 and a complete answer: JSON with choices, or a stream
ending in ``[DONE]`` without an error event), a **clean error** (OpenAI's envelope, or an error
event then ``[DONE]``), **cut** (a transport failure or truncated stream while the gateway was
being killed), **down** (connection refused while it was down), or **broken** (anything else:
a 500, a body without the envelope, a truncated stream while nothing was being killed).
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    answered_ids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # "<status> <code>" / "stream <code>"
    fives: int = 0  # clean errors with a 5xx status
    cut: int = 0
    down: int = 0
    broken: list[str] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)
    burst_answered: int = 0
    burst_other: int = 0
    burst_kinds: Counter[str] = field(default_factory=Counter)
    header_reply: str = "not sent"
    header_refused: bool = False
    slowloris_reply: str = "not sent"
    slowloris_refused: bool = False
    schedule: list[str] = field(default_factory=list)
    kills: list[list[float]] = field(default_factory=list)  # [start, end] of each window a kill covers

    def kill_started(self) -> None:
        self.kills.append([time.monotonic(), float("inf")])

    def kill_ended(self) -> None:
        self.kills[-1][1] = time.monotonic()

    def during_kill(self, began: float, ended: float) -> bool:
        return any(began <= end and ended >= start for start, end in self.kills)


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally, model: str, max_tokens: int,
                      *, burst: bool = False) -> None:
    stream = rng.random() < 0.4
    body = {"model": model, "messages": [{"role": "user", "content": f"Name a colour. ({rng.randrange(10**6)})"}],
            "max_tokens": max_tokens, "stream": stream}
    tally.sent += 1
    began = time.monotonic()
    kind = _outcome(tally, model, stream, *(await _send(client, body)), began)
    if burst:
        if kind == "answered":
            tally.burst_answered += 1
        else:
            tally.burst_other += 1
            tally.burst_kinds[kind] += 1


async def _send(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[httpx.Response | None, bytes, str]:
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            return response, await response.aread(), ""
    except httpx.ConnectError:
        return None, b"", "connect"
    except httpx.HTTPError as exc:
        return None, b"", type(exc).__name__


def _outcome(tally: Tally, model: str, stream: bool, response: httpx.Response | None, data: bytes, failure: str,
             began: float) -> str:
    ended = time.monotonic()
    if response is None:
        if tally.during_kill(began, ended):
            if failure == "connect":
                tally.down += 1
                return "down"
            tally.cut += 1
            return "cut"
        tally.broken.append(f"{model}: transport {failure}")
        return "broken"
    if response.status_code != 200:
        try:
            error = orjson.loads(data)["error"]
            kind = f"{response.status_code} {error['code']}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            tally.broken.append(f"{model}: HTTP {response.status_code} without an OpenAI envelope")
            return "broken"
        if response.status_code >= 500 and response.status_code not in (502, 503, 504):
            tally.broken.append(f"{model}: {kind}")
            return "broken"
        tally.errors[kind] += 1
        tally.fives += response.status_code >= 500
        return kind
    if stream:
        events = [line[6:] for line in data.decode(errors="replace").split("\n") if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            if tally.during_kill(began, ended):
                tally.cut += 1
                return "cut"
            tally.broken.append(f"{model}: stream without [DONE]")
            return "broken"
        for event in events[:-1]:
            payload = orjson.loads(event)
            if "error" in payload:
                tally.errors[f"stream {payload['error']['code']}"] += 1
                return "stream error"
    elif not orjson.loads(data).get("choices"):
        tally.broken.append(f"{model}: 200 without choices")
        return "broken"
    if fallback := response.headers.get("x-slm-gateway-fallback"):
        tally.fallbacks[f"{model}->{fallback}"] += 1
    tally.answered += 1
    tally.answered_ids.append(response.headers["x-slm-gateway-request-id"])
    return "answered"


def huge_header(port: int, size: int, tally: Tally) -> None:
    """One request whose header is ``size`` bytes (sent in 1 MiB pieces); refused = 431 or closed."""
    piece = b"a" * (1 << 20)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-huge: ")
            for _ in range(size // len(piece)):
                sock.sendall(piece)
            sock.sendall(b"\r\n\r\n")
            reply = sock.recv(100).decode("latin-1").split("\r\n")[0]
    except OSError as exc:
        reply = f"connection closed on it ({type(exc).__name__})"
    tally.header_reply = reply or "connection closed on it"
    tally.header_refused = not reply.startswith("HTTP/1.1 2")


def slowloris(port: int, seconds: float, tally: Tally) -> None:
    """Trickle header lines for up to ``seconds``; refused = 408 or closed before the end."""
    reply = ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds + 10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            sock.settimeout(0.5)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not reply:
                sock.sendall(b"x-slow: 1\r\n")
                try:
                    reply = sock.recv(100).decode("latin-1").split("\r\n")[0] or "connection closed on it"
                except TimeoutError:
                    continue
    except OSError as exc:
        reply = f"connection closed on it ({type(exc).__name__})"
    tally.slowloris_reply = reply or f"never refused in {seconds:g} s"
    tally.slowloris_refused = bool(reply) and not reply.startswith("HTTP/1.1 2")
