"""POST /v1/chat/completions: validate, route to the model's strategy, shape the answer.

:func:`open_chat` is shared with /v1/responses (translated to chat): it admits the request,
opens its accounting scope and starts ``n`` runs of the strategy; the two endpoints only
differ in how they shape the events.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gateway.auth.enforcement import admit_request
from gateway.auth.estimate import chat_prompt_tokens
from gateway.auth.principal import Principal, principal_of
from gateway.backends.sse import encode_event
from gateway.core.backend import SamplingParams, TokenChunk
from gateway.core.errors import InvalidRequestError
from gateway.core.protocol import (
    INT64_MAX,
    INT64_MIN,
    ChatCompletionRequest,
    chat_logprob_entry,
    client_finish_reason,
    new_id,
    now,
    usage_dict,
)
from gateway.core.strategy import AnswerDone, ChatRequestView, StrategyEvent
from gateway.serving.choices import ChoiceAssembly, merged
from gateway.serving.scope import RequestScope
from gateway.serving.streaming import StreamUsage, collected, first_event, terminated
from gateway.state import get_state

KNOWN_FIELDS = set(ChatCompletionRequest.model_fields)
Indexed = tuple[int, StrategyEvent]


def sampling_params(body: ChatCompletionRequest) -> SamplingParams:
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs=true", param="top_logprobs")
    return SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed, stop=body.stop_sequences(), logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0, extra=body.extra_fields(), defaulted=body.sampling_defaulted(),
        max_tokens_field="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        client_stream=body.streams,
    )


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of n: a seeded request still gets n different samples, reproducibly."""
    if index == 0 or params.seed is None:
        return params
    seed = params.seed + index
    return replace(params, seed=seed if seed <= INT64_MAX else INT64_MIN + (seed - INT64_MAX - 1))


def request_view(
    body: ChatCompletionRequest, request: Request, params: SamplingParams, principal: Principal | None = None
) -> ChatRequestView:
    return ChatRequestView(
        messages=[m.normalised() for m in body.messages], params=params, stream=body.streams, user=body.user,
        headers=dict(request.headers), key_tags=principal.tags if principal is not None else (),
        has_tools=params.wants_tools(), has_response_format=params.wants_structured_output(),
        raw=body.model_dump(exclude_none=True),
    )


@dataclass
class ChatRun:
    scope: RequestScope
    events: AsyncIterator[Indexed]
    choices: int


async def open_chat(body: ChatCompletionRequest, request: Request, endpoint: str = "chat") -> ChatRun:
    state = get_state(request)
    params = sampling_params(body)
    strategy = state.runtime.strategy(body.model)
    n = body.choices
    limit = params.max_tokens * n if params.max_tokens is not None else None
    ticket = await admit_request(request, body.model, chat_prompt_tokens(body.messages) * n, limit)
    principal = principal_of(request)
    key_id = principal.key_id if principal is not None else None
    scope = RequestScope(state, strategy, endpoint, body.streams, key_id, ticket)
    view = request_view(body, request, params, principal)
    runs = [strategy.chat(replace(view, params=choice_params(params, i)) if i else view, scope.ctx) for i in range(n)]
    return ChatRun(scope, merged(runs), n)


async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    run = await open_chat(body, request)
    scope = run.scope
    if body.streams:
        return await _stream(body, scope, run)
    answer = await collected(request, scope, collect_choices(run))
    if answer is None:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    assemblies, dones = answer
    usage = summed_usage(dones)
    scope.settle(usage)
    last = dones[-1]
    payload: dict[str, Any] = {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": last.model,
        "choices": [{
            "index": i, "message": assembly.message(),
            "logprobs": assembly.logprobs_block() if body.logprobs else None,
            "finish_reason": client_finish_reason(done.finish_reason),
        } for i, (assembly, done) in enumerate(zip(assemblies, dones, strict=True))],
        "usage": usage_dict(*usage, usage_fields(dones)),
        **response_fields(dones),
    }
    headers = scope.headers() | scope.cost_headers()
    await scope.finish(usage)
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


async def collect_choices(run: ChatRun) -> tuple[list[ChoiceAssembly], list[AnswerDone]]:
    assemblies = [ChoiceAssembly() for _ in range(run.choices)]
    dones: dict[int, AnswerDone] = {}
    async for index, event in run.events:
        if isinstance(event, AnswerDone):
            dones[index] = event
            continue
        run.scope.mark_first_token()
        assemblies[index].add(event)
    if len(dones) != run.choices:
        raise RuntimeError("strategy ended without AnswerDone")
    return assemblies, [dones[i] for i in range(run.choices)]


def summed_usage(dones: list[AnswerDone]) -> tuple[int, int]:
    return sum(d.prompt_tokens for d in dones), sum(d.completion_tokens for d in dones)


def usage_fields(dones: list[AnswerDone]) -> dict[str, Any]:
    """Relayed usage details (one choice's: an upstream reports them per request)."""
    return dones[-1].usage_fields if len(dones) == 1 else {}


def response_fields(dones: list[AnswerDone]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for done in dones:
        fields.update(done.response_fields)
    return fields


async def _stream(body: ChatCompletionRequest, scope: RequestScope, run: ChatRun) -> Response:
    first = await first_event(run.events, scope)
    usage = StreamUsage()
    return StreamingResponse(
        terminated(_chunks(first, run, body, usage), run.events, scope, usage),
        media_type="text/event-stream", headers=scope.headers() | {"cache-control": "no-cache"},
    )


async def _chunks(first: Indexed, run: ChatRun, body: ChatCompletionRequest, usage: StreamUsage,
                  ) -> AsyncGenerator[bytes, None]:
    scope = run.scope
    chunk_id, created = new_id("chatcmpl"), now()
    model = scope.record.calls[-1].model if scope.record.calls else body.model
    fields: dict[str, Any] = {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        return encode_event({
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model, **fields,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        })

    for index in range(run.choices):
        yield chunk(index, {"role": "assistant", "content": ""})
    dones: dict[int, AnswerDone] = {}
    item: Indexed | None = first
    while item is not None:
        index, event = item
        if isinstance(event, AnswerDone):
            dones[index] = event
            model = event.model
            fields.update(event.response_fields)
            yield chunk(index, {}, client_finish_reason(event.finish_reason))
        else:
            yield _content_chunk(chunk, index, event, bool(body.logprobs))
        item = await anext(run.events, None)
    ordered = [dones[i] for i in sorted(dones)]
    usage.tokens = summed_usage(ordered) if ordered else (0, 0)
    if body.include_usage():
        yield encode_event({
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model, **fields,
            "choices": [], "usage": usage_dict(*usage.tokens, usage_fields(ordered) if ordered else None),
        })


def _content_chunk(chunk: Any, index: int, event: TokenChunk, with_logprobs: bool) -> bytes:
    delta: dict[str, Any] = {}
    if event.text or not event.tool_calls:
        delta["content"] = event.text
    if event.tool_calls:
        delta["tool_calls"] = list(event.tool_calls)
    logprobs = None
    if event.extra:
        delta.update(event.extra.get("delta") or {})
    if with_logprobs:
        logprobs = {"content": [chat_logprob_entry(item) for item in event.logprobs], "refusal": None}
        if event.extra:
            logprobs.update(event.extra.get("logprobs") or {})
    data: bytes = chunk(index, delta, None, logprobs)
    return data
