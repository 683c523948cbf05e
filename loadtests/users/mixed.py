"""A mix over every model the gateway lists: chat, streamed chat and completions per model.

Models come from GET /v1/models (or ``LOADTEST_MODELS``, comma-separated), so the same user
works against any policy; stats rows are named per model, e.g. ``chat [slm]``.
"""

from __future__ import annotations

import os
import random

from locust import task

from loadtests.users.chat import ChatRequests
from loadtests.users.completions import CompletionRequests
from loadtests.users.stream import StreamRequests


class MixedModelsUser(ChatRequests, StreamRequests, CompletionRequests):
    weight = 1

    def discover_models(self) -> list[str]:
        listed = os.environ.get("LOADTEST_MODELS")
        if listed:
            return [m.strip() for m in listed.split(",") if m.strip()]
        discovered = super().discover_models() if self.settings.model else self._all_models()
        return discovered or ["default"]

    def _all_models(self) -> list[str]:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            try:
                return [str(entry["id"]) for entry in response.json()["data"]]
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"bad /v1/models body: {exc}")
                return []

    @task(3)
    def mixed_chat(self) -> None:
        model = random.choice(self.models)
        self.post_chat(model, name=f"chat [{model}]")

    @task(2)
    def mixed_stream(self) -> None:
        model = random.choice(self.models)
        self.stream("/v1/chat/completions", self.chat_body(model, stream=True), name=f"chat stream [{model}]",
                    metric_suffix=f" [{model}]")

    @task(1)
    def mixed_completion(self) -> None:
        model = random.choice(self.models)
        self.post_completion(model, name=f"completions [{model}]")
