"""Non-streamed text completions (/v1/completions)."""

from __future__ import annotations

from locust import task

from loadtests.users.common import OpenAIUser


class CompletionRequests(OpenAIUser):
    abstract = True

    def post_completion(self, model: str, *, name: str) -> None:
        with self.client.post("/v1/completions", json=self.completion_body(model), name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                body = response.json()
                text = body["choices"][0]["text"]
                usage = body["usage"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                response.failure(f"malformed completion: {exc!r}")
                return
            if not isinstance(text, str) or not isinstance(usage, dict):
                response.failure("completion without text or usage")


class CompletionsUser(CompletionRequests):
    weight = 1

    @task
    def complete(self) -> None:
        self.post_completion(self.model, name="/v1/completions")
