"""What every load-test user shares: settings from the environment, model discovery, SSE reading.

Settings (environment variables, read when a user starts):

- ``LOADTEST_MODEL``: public model to call; default: the first id from GET /v1/models.
- ``LOADTEST_MAX_TOKENS``: max_tokens per request (default 32).
- ``LOADTEST_API_KEY``: sent as ``Authorization: Bearer ...`` when set.
- ``LOADTEST_WAIT_MAX_S``: each user waits uniformly 0..this between requests (default 0.2).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from locust import HttpUser, between

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Explain what a load balancer does in two sentences.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "Give a short tip for writing clear code.",
)


@dataclass(frozen=True)
class LoadSettings:
    model: str | None
    max_tokens: int
    api_key: str | None

    @classmethod
    def from_env(cls) -> LoadSettings:
        return cls(model=os.environ.get("LOADTEST_MODEL") or None,
                   max_tokens=int(os.environ.get("LOADTEST_MAX_TOKENS", "32")),
                   api_key=os.environ.get("LOADTEST_API_KEY") or None)


def _wait_max() -> float:
    return float(os.environ.get("LOADTEST_WAIT_MAX_S", "0.2"))


class OpenAIUser(HttpUser):
    """Base class: discovers models on start; subclasses add tasks."""

    abstract = True
    wait_time = between(0.0, _wait_max())

    settings: LoadSettings
    models: list[str]

    def on_start(self) -> None:
        self.settings = LoadSettings.from_env()
        if self.settings.api_key:
            self.client.headers["Authorization"] = f"Bearer {self.settings.api_key}"
        self.models = self.discover_models()

    def discover_models(self) -> list[str]:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            try:
                ids = [str(entry["id"]) for entry in response.json()["data"]]
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"bad /v1/models body: {exc}")
                ids = []
        if self.settings.model:
            return [self.settings.model]
        return ids[:1] or ["default"]

    @property
    def model(self) -> str:
        return self.models[0]

    def chat_body(self, model: str, *, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "max_tokens": self.settings.max_tokens,
                                "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def completion_body(self, model: str, *, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "max_tokens": self.settings.max_tokens,
                                "prompt": random.choice(PROMPTS)}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def post_answer(self, path: str, body: dict[str, Any], *, name: str, text_of: Callable[[Any], Any],
                    what: str) -> None:
        """POST a non-streamed request; a failure unless it is 200 with ``text_of(body)`` a string and usage."""
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                answer = response.json()
                text, usage = text_of(answer), answer["usage"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                response.failure(f"malformed {what}: {exc!r}")
                return
            if not isinstance(text, str) or not isinstance(usage, dict):
                response.failure(f"{what} without text or usage")

    def report_metric(self, name: str, value: float) -> None:
        """A custom stats row (request_type METRIC); the 'response time' columns hold ``value``."""
        self.environment.events.request.fire(request_type="METRIC", name=name, response_time=value,
                                             response_length=0, response=None, context={}, exception=None)


def sse_payloads(lines: Iterator[bytes | str]) -> Iterator[dict[str, Any] | None]:
    """Decode ``data:`` lines; yields each JSON payload, then ``None`` for ``data: [DONE]``."""
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield None
            return
        yield json.loads(data)


def chunk_text(payload: dict[str, Any]) -> str:
    """The text a stream chunk adds (chat ``delta.content`` or completions ``text``)."""
    choices = payload.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")
