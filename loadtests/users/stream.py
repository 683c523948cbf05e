"""Streamed chat completions, with time to first token and decode speed as Locust stats rows.

The request row's time is time-to-response-headers (Locust stops its clock when the call
returns); the METRIC rows carry what matters for streaming:

- ``ttft_ms``: request start to the first chunk with text.
- ``stream_total_ms``: request start to ``data: [DONE]``.
- ``tokens_per_s``: completion tokens after the first, over the time after the first
  (the "response time" columns of this row hold tokens/s, not milliseconds).
"""

from __future__ import annotations

import json
import time
from typing import Any

from locust import task

from loadtests.users.common import OpenAIUser, chunk_text, sse_payloads


class StreamRequests(OpenAIUser):
    abstract = True

    def stream(self, path: str, body: dict[str, Any], *, name: str, metric_suffix: str = "") -> None:
        start = time.perf_counter()
        with self.client.post(path, json=body, name=name, stream=True, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            first_at: float | None = None
            text_chunks = 0
            usage: dict[str, Any] | None = None
            done = False
            try:
                for payload in sse_payloads(response.iter_lines()):
                    if payload is None:
                        done = True
                        break
                    if "error" in payload:
                        response.failure(f"error event mid-stream: {payload['error']}")
                        return
                    if chunk_text(payload):
                        text_chunks += 1
                        if first_at is None:
                            first_at = time.perf_counter()
                    if payload.get("usage"):
                        usage = payload["usage"]
            except (json.JSONDecodeError, OSError, ValueError) as exc:
                response.failure(f"broken stream: {exc!r}")
                return
            end = time.perf_counter()
            if not done:
                response.failure("stream ended without data: [DONE]")
                return
            if usage is None:
                response.failure("no usage chunk although stream_options.include_usage was set")
                return
        if first_at is None:
            return  # an empty answer: valid, but no timing to report
        self.report_metric(f"ttft_ms{metric_suffix}", (first_at - start) * 1000)
        self.report_metric(f"stream_total_ms{metric_suffix}", (end - start) * 1000)
        tokens = int(usage.get("completion_tokens") or text_chunks)
        if tokens > 1 and end > first_at:
            self.report_metric(f"tokens_per_s{metric_suffix}", (tokens - 1) / (end - first_at))


class StreamChatUser(StreamRequests):
    weight = 2

    @task
    def stream_chat(self) -> None:
        self.stream("/v1/chat/completions", self.chat_body(self.model, stream=True),
                    name="/v1/chat/completions [stream]")
