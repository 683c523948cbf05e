"""``openai`` backend: any OpenAI-compatible server (vLLM, a cloud API, another slm-gateway).

Uses one pooled ``aiohttp.ClientSession`` per backend: on the hot path it costs about a
fifth of the CPU httpx did (0.15 vs 0.85 CPU ms per streamed request, side by side against
the fake upstream; see the overhead section of ``docs/benchmarks.md``). Requests always stream from the upstream (with
``stream_options.include_usage``) so time-to-first-token is measured the same way for
streamed and non-streamed client requests. Transport and HTTP errors are translated in
:mod:`gateway.backends.upstream_errors`; the upstream API key never appears in them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from gateway.backends.openai.config import OpenAIBackend
from gateway.backends.openai.relay import StreamRelay, wire_message
from gateway.backends.prompt_scores import split_echo
from gateway.backends.sse import event_batches
from gateway.backends.upstream_errors import TRANSPORT_ERRORS, translate_status, translate_transport
from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    EmbeddingResult,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.errors import UpstreamError, UpstreamUnavailableError

logger = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}


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
        self._client: aiohttp.ClientSession | None = None
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
    def capabilities(self) -> BackendCapabilities:
        # Tools, grammars and prompt logprobs are the upstream's to honour: relayed as sent.
        continues = self.config.supports_prefix_continuation
        return BackendCapabilities(prefix_continuation=continues, prompt_logprobs=continues, tools=True, grammar=True,
                                   embeddings=True, logit_bias=True, penalties=True, relays_all=True)

    @property
    def sampling_defaults(self) -> Mapping[str, Any]:
        return self.config.defaults.as_dict()

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
        self._client = aiohttp.ClientSession(
            headers=headers,
            # No total limit: streams may run long; the guard above enforces first-token and total budgets.
            timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_read=timeouts.idle),
            connector=aiohttp.TCPConnector(limit=self.config.max_connections),
            read_bufsize=1 << 20,  # one SSE line with many top_logprobs can exceed the 64 KiB default
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _require_client(self) -> aiohttp.ClientSession:
        if not self.configured:
            raise UpstreamUnavailableError(self.unconfigured_reason(), backend=self.name)
        if self._client is None:
            raise UpstreamUnavailableError(f"backend {self.name!r} is not started", backend=self.name)
        return self._client

    def _common_body(self, params: SamplingParams) -> dict[str, Any]:
        # The client's fields as sent; the model name is the one deliberate rewrite. Sampling
        # fields the client left unset stay unset: the upstream applies its own defaults.
        body: dict[str, Any] = dict(params.extra)
        body.update({"model": self.upstream_model, "stream": True, "stream_options": {"include_usage": True}})
        if "temperature" not in params.defaulted:
            body["temperature"] = params.temperature
        if "top_p" not in params.defaulted:
            body["top_p"] = params.top_p
        if params.max_tokens is not None:
            body[params.max_tokens_field] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        body = self._common_body(params)
        body["messages"] = [wire_message(m) for m in messages]
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
        relay = StreamRelay(self.name, self.model_name, chat)
        try:
            async with client.post(self.base_url + path, data=_encode(body), headers=_JSON) as response:
                if response.status >= 400:
                    raise translate_status(self.name, response.status, response.headers, await response.read())
                async for payloads in event_batches(response.content.iter_any()):
                    chunk = relay.absorb(payloads)
                    if chunk is not None:
                        yield chunk
        except TRANSPORT_ERRORS as exc:
            raise translate_transport(self.name, exc) from None
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream {self.name!r} sent an event that is not JSON", backend=self.name,
                                code="upstream_bad_response") from None
        yield relay.done()

    async def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]], extra: Mapping[str, Any]) -> EmbeddingResult:
        """Relayed to the upstream's /embeddings. Floats are always asked for: the gateway
        encodes base64 itself when the client wants it, so every backend answers alike."""
        client = self._require_client()
        body = {k: v for k, v in extra.items() if k != "encoding_format"}
        body.update({"model": self.upstream_model, "input": [list(i) if not isinstance(i, str) else i for i in inputs],
                     "encoding_format": "float"})
        try:
            async with client.post(self.base_url + "/embeddings", data=_encode(body), headers=_JSON) as response:
                content = await response.read()
                if response.status >= 400:
                    raise translate_status(self.name, response.status, response.headers, content)
        except TRANSPORT_ERRORS as exc:
            raise translate_transport(self.name, exc) from None
        try:
            data = orjson.loads(content)
            rows = sorted(data["data"], key=lambda row: int(row.get("index", 0)))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UpstreamError(f"upstream {self.name!r} sent an embeddings body we cannot read", backend=self.name,
                                code="upstream_bad_response") from None
        usage = data.get("usage") or {}
        return EmbeddingResult(vectors, int(usage.get("prompt_tokens") or 0), str(data.get("model") or self.model_name))

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
            async with client.post(self.base_url + "/completions", data=_encode(body), headers=_JSON) as response:
                content = await response.read()
                if response.status >= 400:
                    raise translate_status(self.name, response.status, response.headers, content)
        except TRANSPORT_ERRORS as exc:
            raise translate_transport(self.name, exc) from None
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream {self.name!r} sent a body that is not JSON", backend=self.name,
                                code="upstream_bad_response") from None
        if not isinstance(data, dict) or not data.get("choices"):
            raise UpstreamError(f"upstream {self.name!r} sent a completion without choices", backend=self.name,
                                code="upstream_bad_response")
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
