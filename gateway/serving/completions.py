"""POST /v1/completions: raw prompts (text or token ids), echo, prompt logprobs (vLLM semantics).

With ``echo`` and ``logprobs`` the answer carries the log-probability of every prompt token
under the model, and ``prompt_logprobs: K`` returns vLLM's per-token dictionaries with the
token's rank: this is what lets a gateway serve as the verifier in speculative decoding.
A list of prompts and ``n`` give ``len(prompts) * n`` choices, in OpenAI's order (prompt by
prompt, n each), generated concurrently and counted together.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gateway.auth.enforcement import admit_request
from gateway.auth.estimate import text_tokens
from gateway.auth.principal import principal_of
from gateway.backends.sse import encode_event
from gateway.core.backend import (
    CompletionPrompt,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.errors import InvalidRequestError, UnsupportedParameterError
from gateway.core.protocol import CompletionRequest, client_finish_reason, new_id, now, usage_dict
from gateway.serving.chat import choice_params
from gateway.serving.choices import merged
from gateway.serving.completion_logprobs import legacy_logprobs, vllm_prompt_logprobs
from gateway.serving.scope import RequestScope
from gateway.serving.streaming import StreamUsage, collected, first_event, terminated
from gateway.state import get_state

Indexed = tuple[int, GenerationEvent]


def completion_prompts(body: CompletionRequest) -> list[CompletionPrompt]:
    wants_prompt_scores = body.prompt_logprobs is not None or (bool(body.echo) and body.logprobs is not None)
    scores_k = body.prompt_logprobs if body.prompt_logprobs is not None else (body.logprobs or 0)
    scores = scores_k if wants_prompt_scores else None
    prompts: list[CompletionPrompt] = []
    for prompt in body.prompts():
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if isinstance(prompt, str):
            prompts.append(CompletionPrompt(text=prompt, echo=bool(body.echo), prompt_logprobs=scores))
        else:
            prompts.append(CompletionPrompt(token_ids=[int(t) for t in prompt], echo=bool(body.echo),
                                            prompt_logprobs=scores))
    if not prompts:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    return prompts


def completion_params(body: CompletionRequest) -> SamplingParams:
    if body.best_of not in (None, 0, 1, body.choices):
        raise UnsupportedParameterError("best_of > n is not supported (it would discard answers the "
                                        "request pays for); leave it out or set it to n", param="best_of")
    max_tokens = body.token_limit()
    if max_tokens == 0 and not body.echo:
        raise InvalidRequestError("max_tokens=0 is only allowed with echo=true", param="max_tokens")
    extra = body.extra_fields()
    extra.pop("best_of", None)  # equal to n (checked above), and n is answered by separate requests
    return SamplingParams(
        max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed,
        stop=body.stop_sequences(), logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
        extra=extra, client_stream=body.streams, defaulted=body.sampling_defaulted(),
    )


def _prompt_tokens(prompt: CompletionPrompt) -> int:
    return len(prompt.token_ids) if prompt.token_ids is not None else text_tokens(prompt.text or "")


async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = get_state(request)
    prompts, params = completion_prompts(body), completion_params(body)
    strategy = state.runtime.strategy(body.model)
    n = body.choices
    runs_total = len(prompts) * n
    limit = params.max_tokens * runs_total if params.max_tokens is not None else None
    ticket = await admit_request(request, body.model, sum(_prompt_tokens(p) for p in prompts) * n, limit)
    principal = principal_of(request)
    key_id = principal.key_id if principal is not None else None
    scope = RequestScope(state, strategy, "completions", body.streams, key_id, ticket)
    try:
        runs = [strategy.completion(prompt, choice_params(params, k), scope.ctx) for prompt in prompts
                for k in range(n)]
    except BaseException as exc:  # a strategy without /v1/completions: release the reservation
        to_client = scope.fail(exc)
        await scope.finish()
        if to_client is exc:
            raise
        raise to_client from exc
    order = [prompt for prompt in prompts for _ in range(n)]
    events = merged(runs)
    if body.streams:
        return await _stream(body, scope, events, order)
    answer = await collected(request, scope, _collect(events, scope, len(order)))
    if answer is None:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    chunks, dones = answer
    choices = [_choice(body, i, prompt, chunks[i], dones[i]) for i, prompt in enumerate(order)]
    usage = (sum(d.prompt_tokens for d in dones), sum(d.completion_tokens for d in dones))
    scope.settle(usage)
    fields: dict[str, Any] = {}
    for done in dones:
        fields.update(done.response_fields)
    payload = {
        "id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": dones[-1].model,
        "choices": choices, "usage": usage_dict(*usage, dones[0].usage_fields if len(dones) == 1 else None),
        **fields,
    }
    headers = scope.headers() | scope.cost_headers()
    await scope.finish(usage)
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


def _choice(body: CompletionRequest, index: int, prompt: CompletionPrompt, chunks: list[TokenChunk],
            done: GenerationDone) -> dict[str, Any]:
    text = "".join(c.text for c in chunks)
    generated = [lp for c in chunks for lp in c.logprobs]
    choice: dict[str, Any] = {
        "index": index, "text": (_prompt_text(prompt, done) + text) if body.echo else text,
        "logprobs": legacy_logprobs(body.logprobs, bool(body.echo), done, generated),
        "finish_reason": _finish(done.finish_reason),
    }
    if body.prompt_logprobs is not None:
        choice["prompt_logprobs"] = vllm_prompt_logprobs(done)
    return choice


def _finish(reason: str) -> str:
    finish = client_finish_reason(reason)
    return finish if finish in ("stop", "length", "content_filter") else "stop"


async def _collect(
    events: AsyncIterator[Indexed], scope: RequestScope, count: int
) -> tuple[list[list[TokenChunk]], list[GenerationDone]]:
    chunks: list[list[TokenChunk]] = [[] for _ in range(count)]
    dones: dict[int, GenerationDone] = {}
    async for index, event in events:
        if isinstance(event, GenerationDone):
            dones[index] = event
            continue
        scope.mark_first_token()
        chunks[index].append(event)
    if len(dones) != count:
        raise RuntimeError("backend ended without GenerationDone")
    return chunks, [dones[i] for i in range(count)]


def _prompt_text(prompt: CompletionPrompt, done: GenerationDone) -> str:
    return prompt.text if prompt.text is not None else (done.prompt_text or "")


_NO_SCORES = GenerationDone("stop", 0, 0, "")  # stands in while the real end of generation is unknown


async def _stream(body: CompletionRequest, scope: RequestScope, events: AsyncIterator[Indexed],
                  order: list[CompletionPrompt]) -> Response:
    first = await first_event(events, scope)
    usage = StreamUsage()
    chunks = _chunks(first, events, scope, body, order, usage)
    return StreamingResponse(terminated(chunks, events, scope, usage), media_type="text/event-stream",
                             headers=scope.headers() | {"cache-control": "no-cache"})


async def _chunks(
    first: Indexed, events: AsyncIterator[Indexed], scope: RequestScope,
    body: CompletionRequest, order: list[CompletionPrompt], usage: StreamUsage,
) -> AsyncGenerator[bytes, None]:
    chunk_id, created = new_id("cmpl"), now()
    model = scope.record.calls[-1].model if scope.record.calls else body.model

    def chunk(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None) -> bytes:
        return encode_event({"id": chunk_id, "object": "text_completion", "created": created, "model": model,
                             "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                          "finish_reason": finish}]})

    def answer_logprobs(event: TokenChunk) -> dict[str, Any] | None:
        return legacy_logprobs(body.logprobs, False, _NO_SCORES, list(event.logprobs))

    # The prompt's scores arrive with the end of generation: with echo and logprobs a choice's
    # answer is held until then, so the echoed prompt chunk carries its logprobs, as vLLM's
    # first chunk does (echo with logprobs is for scoring, whose answers are short or empty).
    hold = bool(body.echo) and body.logprobs is not None
    held: dict[int, list[TokenChunk]] = {}
    started: set[int] = set()
    dones: dict[int, GenerationDone] = {}
    item: Indexed | None = first
    while item is not None:
        index, event = item
        if body.echo and not hold and index not in started:
            started.add(index)
            known = event if isinstance(event, GenerationDone) else _NO_SCORES
            yield chunk(index, _prompt_text(order[index], known), None)
        if isinstance(event, GenerationDone):
            dones[index] = event
            model = event.model
            if hold:
                yield chunk(index, _prompt_text(order[index], event), None,
                            legacy_logprobs(body.logprobs, True, event, []))
                for piece in held.pop(index, []):
                    yield chunk(index, piece.text, None, answer_logprobs(piece))
            yield chunk(index, "", _finish(event.finish_reason))
        elif hold:
            held.setdefault(index, []).append(event)
        else:
            yield chunk(index, event.text, None, answer_logprobs(event) if body.logprobs is not None else None)
        item = await anext(events, None)
    usage.tokens = (sum(d.prompt_tokens for d in dones.values()), sum(d.completion_tokens for d in dones.values()))
    if body.include_usage():
        yield encode_event({"id": chunk_id, "object": "text_completion", "created": created, "model": model,
                            "choices": [], "usage": usage_dict(*usage.tokens)})
