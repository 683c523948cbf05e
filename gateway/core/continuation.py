"""Continuing the final assistant message (a prefill): a chat request whose last message is the
start of the assistant's answer, with ``continue_final_message: true`` — vLLM's parameter, which
llama.cpp's server and Anthropic's prefill also offer. The model writes on from that text inside
the same assistant turn; the response carries only what it wrote.

Why a gateway needs it: it is how a client pins an answer's shape without spending tokens on it
(``{"role": "assistant", "content": "```python\\ndef f(x):"}``: the model writes the body, not a
restatement of the signature and docstring — a third of the tokens on HumanEval), and agents use
it to seed JSON. Local backends render the template up to the assistant turn and append the
text; HTTP upstreams receive the field (vLLM and slm-gateway honour it); strategies that render
a prompt themselves (speculative decoding, the cascade's hand-off) go through
:func:`render_chat_text`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.core.backend import Backend, ChatMessage
from gateway.core.errors import InvalidRequestError

FIELD = "continue_final_message"


def continues_final_message(messages: Sequence[ChatMessage], extra: Mapping[str, Any]) -> bool:
    """Whether the request continues its last message; a 400 when it asks for that wrongly."""
    if not extra.get(FIELD):
        return False
    if not messages or messages[-1].role != "assistant":
        raise InvalidRequestError(f"{FIELD} needs the last message to be the assistant's", param=FIELD)
    if extra.get("add_generation_prompt"):
        raise InvalidRequestError(f"{FIELD} and add_generation_prompt cannot both be true", param=FIELD)
    if messages[-1].tool_calls:
        raise InvalidRequestError(f"{FIELD} cannot continue an assistant message with tool_calls", param=FIELD)
    return True


def split_final(messages: Sequence[ChatMessage], extra: Mapping[str, Any]) -> tuple[Sequence[ChatMessage], str]:
    """The messages to render with a generation prompt, and the text to append after it ("" when
    the request continues nothing)."""
    if continues_final_message(messages, extra):
        return messages[:-1], messages[-1].content
    return messages, ""


async def render_chat_text(backend: Backend, messages: Sequence[ChatMessage], extra: Mapping[str, Any]) -> str | None:
    """``backend``'s chat template applied to the request, a continued final message included
    (None: the backend renders no template)."""
    head, prefix = split_final(messages, extra)
    text = await backend.render_chat_prompt(head)
    return None if text is None else text + prefix
