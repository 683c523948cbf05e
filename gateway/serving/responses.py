"""POST /v1/responses: OpenAI's Responses API, answered as a chat completion by any model.

The request becomes a chat request (:mod:`gateway.core.responses_protocol`) that runs through
the chat path (:func:`gateway.serving.chat.open_chat`: admission, the strategy, accounting);
the answer is shaped as a Response object, or streamed as the Responses event sequence
(``response.created`` ... ``response.output_text.delta`` ... ``response.completed``). With
``store`` (the default) the conversation is kept for ``previous_response_id``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from gateway.core.errors import GatewayError, InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.core.protocol import ChatCompletionRequest, chat_logprob_entry, new_id, now
from gateway.core.responses_protocol import ResponsesRequest, chat_body, input_messages
from gateway.core.strategy import AnswerDone
from gateway.core.structured.tool_calls import merge_tool_fragments
from gateway.serving.chat import ChatRun, collect_choices, open_chat
from gateway.serving.choices import ChoiceAssembly
from gateway.serving.response_store import ResponseStore, open_response_store
from gateway.serving.streaming import StreamUsage, collected, first_event, terminated
from gateway.state import GatewayState, get_state


def _store(state: GatewayState) -> ResponseStore:
    if state.response_store is None:
        settings = state.settings
        state.response_store = open_response_store(settings.redis_url, settings.data_dir,
                                                   settings.reliability.redis_pool)
    return state.response_store


async def _guarded(call: Any) -> Any:
    try:
        return await call
    except GatewayError:
        raise
    except Exception as exc:  # Redis down, SQLite locked: the store, not the request, failed
        raise UpstreamUnavailableError(f"the response store is unavailable ({type(exc).__name__})",
                                       code="response_store_unavailable") from None


def _chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidRequestError(f"Invalid request: {where}: {first.get('msg')}", param="input") from None


async def create_response(body: ResponsesRequest, request: Request) -> Response:
    body.check_supported()
    state = get_state(request)
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        entry = await _guarded(_store(state).load(body.previous_response_id))
        if entry is None:
            raise NotFoundError(f"Previous response with id '{body.previous_response_id}' not found.",
                                param="previous_response_id")
        history = list(entry.get("messages") or [])
    chat = _chat_request(chat_body(body, history))
    conversation = history + input_messages(body.input)
    run = await open_chat(chat, request, endpoint="responses")
    shape = ResponseShape(body, _item_id("resp"), now())
    if body.stream:
        first = await first_event(run.events, run.scope)
        usage = StreamUsage()
        events = _events(first, run, shape, usage, state, conversation)
        return StreamingResponse(terminated(events, run.events, run.scope, usage), media_type="text/event-stream",
                                 headers=run.scope.headers() | {"cache-control": "no-cache"})
    answer = await collected(request, run.scope, collect_choices(run))
    if answer is None:
        return Response(status_code=499)
    (assembly,), (done,) = answer
    tokens = (done.prompt_tokens, done.completion_tokens)
    run.scope.settle(tokens)
    payload = shape.response(done, shape.output_items(assembly))
    await _remember(state, shape, payload, conversation, assembly)
    headers = run.scope.headers() | run.scope.cost_headers()
    await run.scope.finish(tokens)
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


async def _remember(state: GatewayState, shape: ResponseShape, payload: dict[str, Any],
                    conversation: list[dict[str, Any]], assembly: ChoiceAssembly) -> None:
    if shape.request.store is False:
        return
    reply = assembly.message()
    turn = {"role": "assistant", "content": reply["content"]}
    if reply.get("tool_calls"):
        turn["tool_calls"] = reply["tool_calls"]
    entry = {"response": payload, "messages": [*conversation, turn]}
    await _guarded(_store(state).save(shape.response_id, entry))


def _item_id(prefix: str) -> str:
    return new_id(prefix).replace("-", "_", 1)  # OpenAI's shape: resp_..., msg_...


class ResponseShape:
    """The Response object of one request, and its output items."""

    def __init__(self, request: ResponsesRequest, response_id: str, created: int) -> None:
        self.request = request
        self.response_id = response_id
        self.created = created
        self.message_id = _item_id("msg")

    def response(self, done: AnswerDone | None, output: list[dict[str, Any]]) -> dict[str, Any]:
        req = self.request
        incomplete = done is not None and done.finish_reason == "length"
        status = "in_progress" if done is None else ("incomplete" if incomplete else "completed")
        body: dict[str, Any] = {
            "id": self.response_id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": now() if status == "completed" else None, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": done.model if done is not None else req.model, "output": output,
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id, "reasoning": None,
            "store": req.store is not False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": (req.text or {}).get("format") or {"type": "text"}},
            "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
            "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
            "metadata": req.metadata or {},
        }
        if req.user is not None:
            body["user"] = req.user
        if done is not None:
            body["usage"] = {
                "input_tokens": done.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": done.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": done.prompt_tokens + done.completion_tokens,
            }
        return body

    def message_item(self, text: str, logprobs: list[dict[str, Any]], status: str = "completed",
                     refusal: str | None = None) -> dict[str, Any]:
        content: list[dict[str, Any]] = [] if status == "in_progress" else [self.text_part(text, logprobs)]
        if refusal:
            content.append({"type": "refusal", "refusal": refusal})
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}

    @staticmethod
    def call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
        function = call.get("function") or {}
        call_id = str(call.get("id") or new_id("call"))
        return {"type": "function_call", "id": "fc_" + call_id.removeprefix("call_"), "call_id": call_id,
                "name": str(function.get("name") or ""),
                "arguments": "" if status == "in_progress" else str(function.get("arguments") or ""),
                "status": status}

    def output_items(self, assembly: ChoiceAssembly) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        refusal = assembly.delta_extra.get("refusal")
        if assembly.text or not assembly.tool_calls or refusal:
            items.append(self.message_item(assembly.text, assembly.logprobs if self.request.wants_logprobs() else [],
                                           refusal=refusal if isinstance(refusal, str) else None))
        items.extend(self.call_item(call) for call in assembly.tool_calls)
        return items


async def _events(first: tuple[int, Any], run: ChatRun, shape: ResponseShape, usage: StreamUsage,
                  state: GatewayState, conversation: list[dict[str, Any]]) -> AsyncGenerator[bytes, None]:
    stream = _EventStream()
    yield stream.event("response.created", response=shape.response(None, []))
    yield stream.event("response.in_progress", response=shape.response(None, []))
    assembly = ChoiceAssembly()
    wants_logprobs = shape.request.wants_logprobs()
    message_open = False
    calls: list[dict[str, Any]] = []
    item: tuple[int, Any] | None = first
    done: AnswerDone | None = None
    while item is not None:
        _, event = item
        if isinstance(event, AnswerDone):
            done = event
        else:
            assembly.add(event)
            if event.text and not message_open:
                message_open = True
                yield stream.event("response.output_item.added", output_index=0,
                                   item=shape.message_item("", [], "in_progress"))
                yield stream.event("response.content_part.added", item_id=shape.message_id, output_index=0,
                                   content_index=0, part=shape.text_part("", []))
            if event.text:
                logprobs = [chat_logprob_entry(lp) for lp in event.logprobs] if wants_logprobs else []
                yield stream.event("response.output_text.delta", item_id=shape.message_id, output_index=0,
                                   content_index=0, delta=event.text, logprobs=logprobs)
            for fragment in event.tool_calls:
                for data in _call_events(stream, shape, calls, fragment, 1 if message_open else 0):
                    yield data
        item = await anext(run.events, None)
    if done is None:
        raise RuntimeError("strategy ended without AnswerDone")
    usage.tokens = (done.prompt_tokens, done.completion_tokens)
    logprobs = assembly.logprobs if wants_logprobs else []
    if message_open:
        yield stream.event("response.output_text.done", item_id=shape.message_id, output_index=0, content_index=0,
                           text=assembly.text, logprobs=logprobs)
        yield stream.event("response.content_part.done", item_id=shape.message_id, output_index=0,
                           content_index=0, part=shape.text_part(assembly.text, logprobs))
        yield stream.event("response.output_item.done", output_index=0,
                           item=shape.message_item(assembly.text, logprobs))
    offset = 1 if message_open else 0
    for index, call in enumerate(assembly.tool_calls):
        if not call.get("id") and index < len(calls):
            call["id"] = calls[index]["id"]
        finished = shape.call_item(call)
        yield stream.event("response.function_call_arguments.done", item_id=finished["id"], output_index=index + offset,
                           name=finished["name"], arguments=finished["arguments"])
        yield stream.event("response.output_item.done", output_index=index + offset, item=finished)
    payload = shape.response(done, shape.output_items(assembly))
    await _remember(state, shape, payload, conversation, assembly)
    kind = "response.incomplete" if payload["status"] == "incomplete" else "response.completed"
    yield stream.event(kind, response=payload)


def _call_events(stream: _EventStream, shape: ResponseShape, calls: list[dict[str, Any]],
                 fragment: dict[str, Any], offset: int) -> list[bytes]:
    before = len(calls)
    merge_tool_fragments(calls, [fragment])
    index = int(fragment.get("index", len(calls) - 1))
    if not calls[index].get("id"):
        calls[index]["id"] = new_id("call")  # one id for the item's whole life
    out = []
    if len(calls) > before:
        out.append(stream.event("response.output_item.added", output_index=index + offset,
                                item=shape.call_item(calls[index], "in_progress")))
    arguments = (fragment.get("function") or {}).get("arguments")
    if arguments:
        out.append(stream.event("response.function_call_arguments.delta", output_index=index + offset,
                                item_id=shape.call_item(calls[index])["id"], delta=str(arguments)))
    return out


class _EventStream:
    """Numbers the events and writes them as named server-sent events."""

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
