"""A model's chat template (the Jinja source stored in its GGUF), rendered in a sandbox.

The template comes from a model file, so it runs in jinja2's immutable sandbox: it can
format the conversation but not reach Python objects. The globals are the ones Hugging
Face templates expect: ``raise_exception``, ``strftime_now``, ``bos_token``/``eos_token``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.core.backend import ChatMessage
from gateway.core.errors import InvalidRequestError


class ChatTemplateError(InvalidRequestError):
    """The template refused the conversation (e.g. roles that must alternate)."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"the model's chat template refused the conversation: {message}", param="messages")


def _strftime_now(format_: str) -> str:
    return datetime.datetime.now().strftime(format_)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self._template = environment.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        context: dict[str, Any] = {
            "messages": [m.template_dict() for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos,
            "eos_token": self._eos,
        }
        try:
            return self._template.render(**context)
        except ChatTemplateError:
            raise
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}", param="messages") from exc
