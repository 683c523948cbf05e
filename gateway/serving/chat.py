"""POST /v1/chat/completions: validate, route to the model's strategy, shape the answer."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gateway.auth.enforcement import admit_request
from gateway.auth.estimate import chat_prompt_tokens
from gateway.backends.sse import encode_event
from gateway.core.backend import SamplingParams, TokenChunk
from gateway.core.errors import InvalidRequestError, UnsupportedParameterError
from gateway.core.protocol import ChatCompletionRequest, chat_logprob_entry, new_id, now, usage_dict
from gateway.core.strategy import AnswerDone, ChatRequestView, StrategyEvent
from gateway.serving.scope import RequestScope
from gateway.serving.streaming import StreamUsage, collected, first_event, terminated
from gateway.state import get_state

KNOWN_FIELDS = set(ChatCompletionRequest.model_fields)


def sampling_params(body: ChatCompletionRequest) -> SamplingParams:
    if body.n != 1:
        raise UnsupportedParameterError("only n=1 is supported", param="n")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs=true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    return SamplingParams(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
        stop=body.stop_sequences(), logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
        extra=body.extra_fields(),
    )


def request_view(body: ChatCompletionRequest, request: Request, params: SamplingParams) -> ChatRequestView:
    return ChatRequestView(
        messages=[m.normalised() for m in body.messages], params=params, stream=body.stream, user=body.user,
        headers=dict(request.headers), key_tags=tuple(getattr(request.state, "key_tags", ())),
        has_tools=bool(body.tools), has_response_format=body.response_format is not None,
        raw=body.model_dump(exclude_none=True),
    )


async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = get_state(request)
    params = sampling_params(body)
    strategy = state.runtime.strategy(body.model)
    ticket = await admit_request(request, body.model, chat_prompt_tokens(body.messages), params.max_tokens)
    scope = RequestScope(state, strategy, "chat", body.stream, getattr(request.state, "key_id", None), ticket)
    events = strategy.chat(request_view(body, request, params), scope.ctx)
    if body.stream:
        return await _stream(body, request, scope, events)
    answer = await collected(request, scope, _collect(events, scope))
    if answer is None:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    text, logprobs, done = answer
    scope.settle((done.prompt_tokens, done.completion_tokens))
    payload: dict[str, Any] = {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": done.model,
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": {"content": logprobs} if body.logprobs else None, "finish_reason": done.finish_reason,
        }],
        "usage": usage_dict(done.prompt_tokens, done.completion_tokens),
    }
    headers = scope.headers() | scope.cost_headers()
    await scope.finish((done.prompt_tokens, done.completion_tokens))
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


async def _collect(
    events: AsyncIterator[StrategyEvent], scope: RequestScope
) -> tuple[str, list[dict[str, Any]], AnswerDone]:
    parts: list[str] = []
    logprobs: list[dict[str, Any]] = []
    async for event in events:
        if isinstance(event, AnswerDone):
            return "".join(parts), logprobs, event
        scope.mark_first_token()
        parts.append(event.text)
        logprobs.extend(chat_logprob_entry(item) for item in event.logprobs)
    raise RuntimeError("strategy ended without AnswerDone")


async def _stream(
    body: ChatCompletionRequest, request: Request, scope: RequestScope, events: AsyncIterator[StrategyEvent]
) -> Response:
    first = await first_event(events, scope)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    usage = StreamUsage()
    return StreamingResponse(
        terminated(_chunks(first, events, scope, body, include_usage, usage), events, scope, usage),
        media_type="text/event-stream", headers=scope.headers() | {"cache-control": "no-cache"},
    )


async def _chunks(
    first: StrategyEvent, events: AsyncIterator[StrategyEvent], scope: RequestScope,
    body: ChatCompletionRequest, include_usage: bool, usage: StreamUsage,
) -> AsyncGenerator[bytes, None]:
    chunk_id, created = new_id("chatcmpl"), now()
    model = scope.record.calls[-1].model if scope.record.calls else body.model

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        return encode_event({
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        })

    yield chunk({"role": "assistant", "content": ""})
    event: StrategyEvent = first
    while not isinstance(event, AnswerDone):
        yield _content_chunk(chunk, event, body.logprobs)
        event = await events.__anext__()
    model = event.model
    usage.tokens = (event.prompt_tokens, event.completion_tokens)
    yield chunk({}, event.finish_reason)
    if include_usage:
        yield encode_event({
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage_dict(*usage.tokens),
        })


def _content_chunk(chunk: Any, event: TokenChunk, with_logprobs: bool) -> bytes:
    logprobs = {"content": [chat_logprob_entry(item) for item in event.logprobs]} if with_logprobs else None
    data: bytes = chunk({"content": event.text}, None, logprobs)
    return data
