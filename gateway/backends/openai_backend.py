"""``openai`` backend: any OpenAI-compatible server (vLLM, a cloud API, another slm-gateway).

Uses one pooled ``httpx.AsyncClient`` per backend. Requests always stream from the
upstream (with ``stream_options.include_usage``) so time-to-first-token is measured the
same way for streamed and non-streamed client requests. Transport and HTTP errors are
translated here into :mod:`gateway.errors`; the upstream API key never appears in them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson

from gateway.backends.base import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
    TopLogprob,
)
from gateway.backends.prompt_scores import split_echo
from gateway.backends.sse import decode_events
from gateway.backends.upstream_errors import translate_status, translate_transport
from gateway.errors import UpstreamError, UpstreamUnavailableError
from policies.schema import OpenAIBackend

logger = logging.getLogger(__name__)


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # forwarded client fields may hold integers beyond 64 bits
        return json.dumps(body).encode()


def resolve_env(literal: str | None, env_name: str | None) -> str | None:
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    return literal


class OpenAICompatibleBackend(Backend):
    def __init__(self, name: str, config: OpenAIBackend) -> None:
        super().__init__(name)
        self.config = config
        self.base_url = (resolve_env(config.base_url, config.base_url_env) or "").rstrip("/")
        self.upstream_model = resolve_env(config.model, config.model_env) or ""
        # Read once at start; kept only in the client's default headers.
        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._client: httpx.AsyncClient | None = None
        self._api_key = api_key

    @property
    def model_name(self) -> str:
        return self.upstream_model or self.name

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.upstream_model)

    @property
    def ready(self) -> bool:
        return self.configured and self._client is not None

    @property
    def supports_prefix_continuation(self) -> bool:
        return self.config.supports_prefix_continuation

    def unconfigured_reason(self) -> str:
        missing = []
        if not self.base_url:
            missing.append(f"base URL (set {self.config.base_url_env or 'base_url'})")
        if not self.upstream_model:
            missing.append(f"model (set {self.config.model_env or 'model'})")
        return f"backend {self.name!r} is not configured: missing " + " and ".join(missing)

    async def start(self) -> None:
        if not self.configured:
            logger.warning("%s; requests routed to it will get 503", self.unconfigured_reason())
            return
        timeouts = self.config.timeouts
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=timeouts.connect, read=timeouts.idle, write=timeouts.idle, pool=timeouts.connect
            ),
            limits=httpx.Limits(
                max_connections=self.config.max_connections, max_keepalive_connections=self.config.max_connections
            ),
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _require_client(self) -> httpx.AsyncClient:
        if not self.configured:
            raise UpstreamUnavailableError(self.unconfigured_reason(), backend=self.name)
        if self._client is None:
            raise UpstreamUnavailableError(f"backend {self.name!r} is not started", backend=self.name)
        return self._client

    def _common_body(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = dict(params.extra)
        body.update({"model": self.upstream_model, "stream": True, "stream_options": {"include_usage": True}})
        body["temperature"] = params.temperature
        if params.top_p != 1.0:
            body["top_p"] = params.top_p
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        body = self._common_body(params)
        body["messages"] = [m.model_dump() for m in messages]
        if params.logprobs:
            body["logprobs"] = True
            if params.top_logprobs:
                body["top_logprobs"] = params.top_logprobs
        async for event in self._stream("/chat/completions", body, chat=True):
            yield event

    async def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        body = self._common_body(params)
        body["prompt"] = list(prompt.token_ids) if prompt.token_ids is not None else prompt.text
        if params.logprobs:
            body["logprobs"] = max(params.top_logprobs, 1)
        if prompt.echo or prompt.prompt_logprobs is not None:
            async for event in self._completion_with_prompt_scores(body, prompt):
                yield event
            return
        async for event in self._stream("/completions", body, chat=False):
            yield event

    async def _stream(self, path: str, body: dict[str, Any], *, chat: bool) -> AsyncIterator[GenerationEvent]:
        client = self._require_client()
        prompt_tokens = completion_tokens = chunks = 0
        extra_usage: dict[str, Any] = {}
        finish = "stop"
        model = self.model_name
        try:
            async with client.stream("POST", path, content=_encode(body),
                                     headers={"content-type": "application/json"}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise translate_status(self.name, response)
                async for payload in decode_events(response.aiter_lines()):
                    if "error" in payload:
                        raise UpstreamError(f"upstream {self.name!r} failed mid-stream", backend=self.name,
                                            code="upstream_stream_error")
                    model = payload.get("model") or model
                    usage = payload.get("usage")
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        completion_tokens = int(usage.get("completion_tokens") or 0)
                        # e.g. accepted/rejected prediction tokens (OpenAI Predicted Outputs)
                        details = usage.get("completion_tokens_details")
                        if isinstance(details, dict):
                            extra_usage["completion_tokens_details"] = details
                    for choice in payload.get("choices") or []:
                        chunk = _chat_chunk(choice) if chat else _completion_chunk(choice)
                        if chunk.text or chunk.logprobs:
                            chunks += 1
                            yield chunk
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise translate_transport(self.name, exc) from None
        yield GenerationDone(
            finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens or chunks, model=model,
            extra_usage=extra_usage,
        )

    async def _completion_with_prompt_scores(
        self, body: dict[str, Any], prompt: CompletionPrompt
    ) -> AsyncIterator[GenerationEvent]:
        """Echo / prompt-logprob requests: one non-streamed call, split into prompt and answer."""
        client = self._require_client()
        body.pop("stream_options", None)
        body["stream"] = False
        body["echo"] = True
        body["logprobs"] = max(int(body.get("logprobs") or 0), 1)
        if prompt.prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt.prompt_logprobs
        try:
            response = await client.post("/completions", content=_encode(body),
                                         headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise translate_transport(self.name, exc) from None
        if response.status_code >= 400:
            raise translate_status(self.name, response)
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        n_prompt = int(usage.get("prompt_tokens") or 0)
        split = split_echo(choice, n_prompt, prompt.token_ids)
        if split.answer_text or split.answer_logprobs:
            yield TokenChunk(text=split.answer_text, logprobs=split.answer_logprobs)
        yield GenerationDone(
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=n_prompt, completion_tokens=int(usage.get("completion_tokens") or 0),
            model=str(data.get("model") or self.model_name), prompt_logprobs=split.prompt_logprobs,
            prompt_token_ids=tuple(prompt.token_ids) if prompt.token_ids is not None else None,
            prompt_text=split.prompt_text, prompt_token_strs=split.prompt_token_strs,
        )


def _top_list(top: Any) -> tuple[TopLogprob, ...]:
    return tuple(TopLogprob(t["token"], float(t["logprob"])) for t in top or [])


def _chat_chunk(choice: dict[str, Any]) -> TokenChunk:
    delta = choice.get("delta") or {}
    content = (choice.get("logprobs") or {}).get("content") or []
    logprobs = tuple(
        TokenLogprob(token=c["token"], logprob=float(c["logprob"]), top=_top_list(c.get("top_logprobs")))
        for c in content
    )
    return TokenChunk(text=delta.get("content") or "", logprobs=logprobs)


def _legacy_logprobs(block: dict[str, Any] | None) -> list[TokenLogprob | None]:
    if not block:
        return []
    tokens = block.get("tokens") or []
    values = block.get("token_logprobs") or []
    tops = block.get("top_logprobs") or [None] * len(tokens)
    out: list[TokenLogprob | None] = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        if value is None:
            out.append(None)
            continue
        alternatives = tuple(TopLogprob(t, float(lp)) for t, lp in (top or {}).items())
        out.append(TokenLogprob(token=token, logprob=float(value), top=alternatives))
    return out


def _completion_chunk(choice: dict[str, Any]) -> TokenChunk:
    entries = [e for e in _legacy_logprobs(choice.get("logprobs")) if e is not None]
    return TokenChunk(text=choice.get("text") or "", logprobs=tuple(entries))
