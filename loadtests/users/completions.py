"""Non-streamed text completions (/v1/completions)."""

from __future__ import annotations

from locust import task

from loadtests.users.common import OpenAIUser


class CompletionRequests(OpenAIUser):
    abstract = True

    def post_completion(self, model: str, *, name: str) -> None:
        self.post_answer("/v1/completions", self.completion_body(model), name=name,
                         text_of=lambda body: body["choices"][0]["text"], what="completion")


class CompletionsUser(CompletionRequests):
    weight = 1

    @task
    def complete(self) -> None:
        self.post_completion(self.model, name="/v1/completions")
