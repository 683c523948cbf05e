"""Non-streamed chat completions."""

from __future__ import annotations

from locust import task

from loadtests.users.common import OpenAIUser


class ChatRequests(OpenAIUser):
    """The request and its checks, without a task (so the mixed user can reuse it)."""

    abstract = True

    def post_chat(self, model: str, *, name: str) -> None:
        self.post_answer("/v1/chat/completions", self.chat_body(model), name=name,
                         text_of=lambda body: body["choices"][0]["message"]["content"], what="chat completion")


class ChatUser(ChatRequests):
    weight = 3

    @task
    def chat(self) -> None:
        self.post_chat(self.model, name="/v1/chat/completions")
