"""Continuing the final assistant message (``continue_final_message``, a prefill): on the real
SmolLM2 in-process, relayed to an HTTP upstream (a second gateway), exactly the raw completion of
the rendered template plus the prefix, and the 400s for requests that ask for it wrongly."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import OpenAI

from gateway.core.backend import ChatMessage
from gateway.core.continuation import continues_final_message, split_final
from gateway.core.errors import InvalidRequestError
from tests.gateway_process import GatewayProcess

QUESTION = {"role": "user", "content": "Write the numbers from one to ten in words, separated by commas."}
PREFILL = {"role": "assistant", "content": "one, two, three,"}


def test_the_request_rules() -> None:
    user, started = ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="Hello")
    assert split_final([user, started], {"continue_final_message": True}) == ([user], "Hello")
    assert split_final([user, started], {}) == ([user, started], "")
    for messages, extra, match in (
            ([user], {"continue_final_message": True}, "last message"),
            ([user, started], {"continue_final_message": True, "add_generation_prompt": True}, "both"),
            ([user, ChatMessage(role="assistant", content="", tool_calls=[{"id": "1"}])],
             {"continue_final_message": True}, "tool_calls")):
        with pytest.raises(InvalidRequestError, match=match) as raised:
            continues_final_message(messages, extra)
        assert raised.value.param == "continue_final_message"


def chat(client: OpenAI, model: str, messages: list[dict[str, Any]]) -> str:
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=12,  # type: ignore[arg-type]
                                              temperature=0, extra_body={"continue_final_message": True})
    return response.choices[0].message.content or ""


def test_continues_the_prefix_in_process_and_through_an_upstream(client: OpenAI, smollm2: tuple[Any, Any]) -> None:
    local = chat(client, "slm", [QUESTION, PREFILL])
    assert not local.lstrip().lower().startswith("one")  # the answer goes on from "three,"
    # The same text as a raw completion of the template up to the assistant turn, plus the prefix.
    _model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template([QUESTION], tokenize=False, add_generation_prompt=True) + PREFILL["content"]
    raw = client.completions.create(model="slm", prompt=prompt, max_tokens=12, temperature=0)
    assert local == raw.choices[0].text
    # Relayed to the upstream gateway (the field travels in the body): the same model, the same text.
    assert chat(client, "llm", [QUESTION, PREFILL]) == local


def test_asked_wrongly_is_a_400_in_the_envelope(gateway: GatewayProcess) -> None:
    for body in ({"messages": [QUESTION], "continue_final_message": True},
                 {"messages": [QUESTION, PREFILL], "continue_final_message": True, "add_generation_prompt": True}):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60,
                              json={"model": "slm", "max_tokens": 4, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "continue_final_message" and error["type"] == "invalid_request_error"
