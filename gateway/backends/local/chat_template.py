"""A model's chat template (the Jinja source stored in its GGUF), rendered in a sandbox.

The template comes from a model file, so it runs in jinja2's immutable sandbox: it can
format the conversation but not reach Python objects. The globals are the ones Hugging
Face templates expect: ``raise_exception``, ``strftime_now``, ``bos_token``/``eos_token``,
and transformers' ``tojson`` (plain ``json.dumps``: jinja2's own escapes ``<``/``>`` as HTML,
which would change the tool definitions Qwen's template shows the model). Tools are rendered
as :mod:`gateway.backends.local.tool_prompt` decides for this template.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.backends.local.tool_prompt import TemplateToolSupport, probe_tool_support, template_conversation
from gateway.core.backend import ChatMessage
from gateway.core.errors import InvalidRequestError


class ChatTemplateError(InvalidRequestError):
    """The template refused the conversation (e.g. roles that must alternate)."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"the model's chat template refused the conversation: {message}", param="messages")


def _strftime_now(format_: str) -> str:
    return datetime.datetime.now().strftime(format_)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        environment.filters["tojson"] = _tojson
        self._template = environment.from_string(source)
        self._bos = bos_token
        self._eos = eos_token
        self.tool_support: TemplateToolSupport = probe_tool_support(self._render_dicts)

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] = ()) -> str:
        dicts, tools_argument = template_conversation(messages, tools, self.tool_support)
        return self._render_dicts(dicts, tools_argument, add_generation_prompt=add_generation_prompt)

    def _render_dicts(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                      add_generation_prompt: bool = True) -> str:
        context: dict[str, Any] = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos,
            "eos_token": self._eos,
        }
        if tools is not None:
            context["tools"] = tools
        try:
            return self._template.render(**context)
        except ChatTemplateError:
            raise
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}", param="messages") from exc
