"""OpenAI wire protocol for chat and text completions: request models (validated) and the
pieces of response bodies.

Requests accept unknown fields (``extra="allow"``): OpenAI adds parameters faster than any
gateway, and HTTP upstreams may understand them, so they are forwarded rather than rejected.
Every field is nullable exactly where OpenAI's openapi document says so; a null means "use
the default". Ranges are checked here, before any backend sees a request, so a client's bad
parameter is always a 400 (never an upstream's 5xx that counts against its health).
Responses are built as dicts and serialised once; the response models here exist for the
gateway's OpenAPI document.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.backend import ChatMessage, TokenLogprob

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_CHARS = 1024  # longer stop strings are almost surely a mistake, and cost a scan per token
TOKEN_ID_MAX = 2**31  # token ids (logit_bias keys, token prompts) are below this


class ContentPart(BaseModel):
    """One part of a message's content. Text parts are what a local model reads; every other
    part (images, audio, files) is relayed as sent to an HTTP upstream."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> ContentPart:
        if self.type in ("text", "input_text", "output_text") and not isinstance(self.text, str):
            raise ValueError(f"a {self.type!r} content part needs a string 'text'")
        return self


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_message_answers_a_call(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type in ("text", "input_text"))

    def normalised(self) -> ChatMessage:
        # "developer" is OpenAI's newer name for the system role, "function" its old tool role;
        # the wire copy keeps the client's own shape for HTTP upstreams.
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        return ChatMessage(
            role=role, content=self.text(), name=self.name, tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id, wire=self.model_dump(exclude_unset=True),
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


# --- tools and structured outputs (validated in shape; relayed as sent) ---------------------


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[a-zA-Z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "function"
    function: FunctionDefinition | None = None

    @model_validator(mode="after")
    def _function_tool_has_function(self) -> Tool:
        if self.type == "function" and self.function is None:
            raise ValueError("a 'function' tool needs a 'function' object with a 'name'")
        return self


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object")
        return self


ToolChoice = Literal["none", "auto", "required"] | dict[str, Any]


# --- requests --------------------------------------------------------------------------------


class GenerationRequest(BaseModel):
    """What chat and text completions share: sampling, stopping, streaming, who asks.

    Unknown fields are kept (``extra="allow"``) and forwarded to the upstream, as vLLM's own
    extensions (``top_k``, ``repetition_penalty``...) travel through.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=128)
    user: str | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, int] | None = None

    # Fields the gateway interprets itself and hands a backend as typed parameters; every other
    # field the client set travels in SamplingParams.extra, unchanged.
    INTERPRETED: ClassVar[frozenset[str]] = frozenset({
        "model", "stream", "stream_options", "temperature", "top_p", "seed", "stop", "n", "messages",
        "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "prompt", "echo",
        "prompt_logprobs",
    })

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit() or int(key) >= TOKEN_ID_MAX:
                raise ValueError(f"logit_bias keys are token ids (0 <= id < 2^31), got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be within [-100, 100], got {bias}")
        return value

    @property
    def streams(self) -> bool:
        return bool(self.stream)

    @property
    def choices(self) -> int:
        return self.n or 1

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop if s)

    def sampling_defaulted(self) -> frozenset[str]:
        """The sampling fields left to the backend's defaults (omitted or null)."""
        return frozenset(name for name in ("temperature", "top_p") if getattr(self, name) is None)

    def extra_fields(self) -> dict[str, Any]:
        """Every field the client set that a backend does not receive typed, as sent (nulls
        dropped: OpenAI reads a null as "not set")."""
        dumped = self.model_dump(exclude_unset=True, by_alias=True, exclude=set(self.INTERPRETED))
        dumped.update(self.model_extra or {})
        return {k: v for k, v in dumped.items() if v is not None and k not in self.INTERPRETED}


class ChatCompletionRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(GenerationRequest):
    # null is OpenAI's documented default, the end-of-text document separator.
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = Field(16, ge=0)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    prompt_logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _token_ids_in_range(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        rows = value if value and isinstance(value[0], list) else [value]
        for row in rows:
            if any(isinstance(t, int) and not 0 <= t < TOKEN_ID_MAX for t in row):
                raise ValueError("prompt token ids must be integers in [0, 2^31)")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, one answer (times n) each: OpenAI's list forms unpacked."""
        prompt = self.prompt
        if prompt is None:
            return ["<|endoftext|>"]
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            return [[]]
        if isinstance(prompt[0], str):
            return [p for p in prompt if isinstance(p, str)]
        if isinstance(prompt[0], list):
            return [list(p) for p in prompt if isinstance(p, list)]
        return [[t for t in prompt if isinstance(t, int)]]

    def token_limit(self) -> int:
        """OpenAI's documented default of 16 tokens stands when max_tokens is null too."""
        return 16 if self.max_tokens is None else self.max_tokens


# --- responses (for the OpenAPI document; bodies are built as dicts) --------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Every error status the gateway may answer with, for the OpenAPI document of each route.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
}


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoiceMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[dict[str, Any]] | None = None


FinishReasonName = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    logprobs: dict[str, Any] | None
    finish_reason: FinishReasonName


class ChatCompletionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "content_filter"]
    prompt_logprobs: list[dict[str, Any] | None] | None = None


class CompletionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if fields:
        usage.update(fields)
    return usage


def client_finish_reason(reason: str) -> str:
    """OpenAI's finish reasons; an answer cut short by the gateway itself reads as ``stop``."""
    return reason if reason in ("stop", "length", "tool_calls", "content_filter", "function_call") else "stop"


def chat_logprob_entry(item: TokenLogprob) -> dict[str, Any]:
    return {
        "token": item.token,
        "logprob": item.logprob,
        "bytes": list(item.token.encode()),
        "top_logprobs": [
            {"token": top.token, "logprob": top.logprob, "bytes": list(top.token.encode())} for top in item.top
        ],
    }
