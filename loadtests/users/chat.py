"""Non-streamed chat completions."""

from __future__ import annotations

from locust import task

from loadtests.users.common import OpenAIUser


class ChatRequests(OpenAIUser):
    """The request and its checks, without a task (so the mixed user can reuse it)."""

    abstract = True

    def post_chat(self, model: str, *, name: str) -> None:
        with self.client.post("/v1/chat/completions", json=self.chat_body(model), name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                body = response.json()
                content = body["choices"][0]["message"]["content"]
                usage = body["usage"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                response.failure(f"malformed chat completion: {exc!r}")
                return
            if not isinstance(content, str) or not isinstance(usage, dict):
                response.failure("chat completion without text content or usage")


class ChatUser(ChatRequests):
    weight = 3

    @task
    def chat(self) -> None:
        self.post_chat(self.model, name="/v1/chat/completions")
