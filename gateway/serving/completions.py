"""POST /v1/completions: raw prompts (text or token ids), echo, prompt logprobs (vLLM semantics).

With ``echo`` and ``logprobs`` the answer carries the log-probability of every prompt token
under the model, and ``prompt_logprobs: K`` returns vLLM's per-token dictionaries with the
token's rank: this is what lets a gateway serve as the verifier in speculative decoding.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gateway.auth.enforcement import admit_request
from gateway.auth.estimate import text_tokens
from gateway.backends.sse import encode_event
from gateway.core.backend import (
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
)
from gateway.core.errors import InvalidRequestError, UnsupportedParameterError
from gateway.core.protocol import CompletionRequest, new_id, now, usage_dict
from gateway.serving.scope import RequestScope
from gateway.serving.streaming import StreamUsage, collected, first_event, terminated
from gateway.state import get_state


def completion_prompt(body: CompletionRequest) -> CompletionPrompt:
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise UnsupportedParameterError("only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    wants_prompt_scores = body.prompt_logprobs is not None or (body.echo and body.logprobs is not None)
    scores_k = body.prompt_logprobs if body.prompt_logprobs is not None else (body.logprobs or 0)
    if isinstance(prompt, str):
        return CompletionPrompt(text=prompt, echo=body.echo, prompt_logprobs=scores_k if wants_prompt_scores else None)
    return CompletionPrompt(
        token_ids=[int(t) for t in prompt], echo=body.echo,
        prompt_logprobs=scores_k if wants_prompt_scores else None,
    )


def completion_params(body: CompletionRequest) -> SamplingParams:
    if body.n != 1:
        raise UnsupportedParameterError("only n=1 is supported", param="n")
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequestError("max_tokens=0 is only allowed with echo=true", param="max_tokens")
    return SamplingParams(
        max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
        stop=body.stop_sequences(), logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
        extra=body.extra_fields(),
    )


async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = get_state(request)
    prompt, params = completion_prompt(body), completion_params(body)
    strategy = state.runtime.strategy(body.model)
    prompt_tokens = len(prompt.token_ids) if prompt.token_ids is not None else text_tokens(prompt.text or "")
    ticket = await admit_request(request, body.model, prompt_tokens, params.max_tokens)
    scope = RequestScope(state, strategy, "completions", body.stream, getattr(request.state, "key_id", None), ticket)
    try:
        events = strategy.completion(prompt, params, scope.ctx)
    except BaseException as exc:  # a strategy without /v1/completions: release the reservation
        scope.fail(exc)
        await scope.finish()
        raise
    if body.stream:
        return await _stream(body, scope, events)
    answer = await collected(request, scope, _collect(events, scope))
    if answer is None:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    chunks, done = answer
    text = "".join(c.text for c in chunks)
    generated = [lp for c in chunks for lp in c.logprobs]
    choice: dict[str, Any] = {
        "index": 0, "text": (_prompt_text(body, done) + text) if body.echo else text,
        "logprobs": _legacy_logprobs(body, done, generated), "finish_reason": done.finish_reason,
    }
    if body.prompt_logprobs is not None:
        choice["prompt_logprobs"] = _vllm_prompt_logprobs(done)
    scope.settle((done.prompt_tokens, done.completion_tokens))
    payload = {
        "id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": done.model,
        "choices": [choice], "usage": usage_dict(done.prompt_tokens, done.completion_tokens),
    }
    headers = scope.headers() | scope.cost_headers()
    await scope.finish((done.prompt_tokens, done.completion_tokens))
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


async def _collect(
    events: AsyncIterator[GenerationEvent], scope: RequestScope
) -> tuple[list[TokenChunk], GenerationDone]:
    chunks: list[TokenChunk] = []
    async for event in events:
        if isinstance(event, GenerationDone):
            return chunks, event
        scope.mark_first_token()
        chunks.append(event)
    raise RuntimeError("backend ended without GenerationDone")


def _prompt_text(body: CompletionRequest, done: GenerationDone) -> str:
    if isinstance(body.prompt, str):
        return body.prompt
    if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str):
        return str(body.prompt[0])
    return done.prompt_text or ""


def _legacy_logprobs(
    body: CompletionRequest, done: GenerationDone, generated: list[TokenLogprob]
) -> dict[str, Any] | None:
    if body.logprobs is None:
        return None
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if body.echo and done.prompt_logprobs is not None:
        strs = done.prompt_token_strs or tuple(lp.token if lp else "" for lp in done.prompt_logprobs)
        for token, item in zip(strs, done.prompt_logprobs, strict=False):
            tokens.append(token)
            values.append(item.logprob if item else None)
            tops.append(_top_dict(item) if item else None)
    for item in generated:
        tokens.append(item.token)
        values.append(item.logprob)
        tops.append(_top_dict(item))
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _top_dict(item: TokenLogprob) -> dict[str, float]:
    """The top-K alternatives plus the chosen token itself (OpenAI: "up to logprobs+1")."""
    top = {t.token: t.logprob for t in item.top}
    top.setdefault(item.token, item.logprob)
    return top


def _vllm_prompt_logprobs(done: GenerationDone) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for item in done.prompt_logprobs or ():
        if item is None:
            out.append(None)
            continue
        entry = {str(item.token_id): {"logprob": item.logprob, "rank": item.rank, "decoded_token": item.token}}
        for rank, top in enumerate(item.top, start=1):
            entry.setdefault(str(top.token_id), {"logprob": top.logprob, "rank": rank, "decoded_token": top.token})
        out.append(entry)
    return out


_NO_SCORES = GenerationDone("stop", 0, 0, "")  # stands in while the real end of generation is unknown


async def _stream(body: CompletionRequest, scope: RequestScope, events: AsyncIterator[GenerationEvent]) -> Response:
    first = await first_event(events, scope)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    usage = StreamUsage()
    chunks = _chunks(first, events, scope, body, include_usage, usage)
    return StreamingResponse(terminated(chunks, events, scope, usage), media_type="text/event-stream",
                             headers=scope.headers() | {"cache-control": "no-cache"})


async def _chunks(
    first: GenerationEvent, events: AsyncIterator[GenerationEvent], scope: RequestScope,
    body: CompletionRequest, include_usage: bool, usage: StreamUsage,
) -> AsyncGenerator[bytes, None]:
    chunk_id, created = new_id("cmpl"), now()
    model = scope.record.calls[-1].model if scope.record.calls else body.model

    def chunk(text: str, finish: str | None, logprobs: dict[str, Any] | None = None) -> bytes:
        return encode_event({"id": chunk_id, "object": "text_completion", "created": created, "model": model,
                             "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]})

    answer_only = body.model_copy(update={"echo": False})  # per-chunk logprobs of generated tokens
    event = first
    held: list[TokenChunk] = []
    if body.echo and body.logprobs is not None:
        # The prompt's scores arrive with the end of generation: hold the answer until then so
        # the echoed prompt chunk carries its logprobs, as vLLM's first chunk does (echo with
        # logprobs is for scoring, whose answers are short or empty).
        while isinstance(event, TokenChunk):
            held.append(event)
            event = await events.__anext__()
        assert isinstance(event, GenerationDone)
        yield chunk(_prompt_text(body, event), None, _legacy_logprobs(body, event, []))
    elif body.echo:
        yield chunk(_prompt_text(body, event if isinstance(event, GenerationDone) else _NO_SCORES), None)
    for item in held:
        yield chunk(item.text, None, _legacy_logprobs(answer_only, _NO_SCORES, list(item.logprobs)))
    while isinstance(event, TokenChunk):
        lps = _legacy_logprobs(answer_only, _NO_SCORES, list(event.logprobs)) if body.logprobs is not None else None
        yield chunk(event.text, None, lps)
        event = await events.__anext__()
    usage.tokens = (event.prompt_tokens, event.completion_tokens)
    yield chunk("", event.finish_reason)
    if include_usage:
        yield encode_event({"id": chunk_id, "object": "text_completion", "created": created, "model": model,
                            "choices": [], "usage": usage_dict(*usage.tokens)})
