"""Thin HTTP routes; the logic lives in gateway.serving."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.auth.principal import principal_of
from gateway.core.embeddings_protocol import EmbeddingRequest, EmbeddingResponse
from gateway.core.errors import ModelNotFoundError
from gateway.core.protocol import (
    ERROR_RESPONSES,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    now,
)
from gateway.core.responses_protocol import ResponsesRequest
from gateway.serving.chat import create_chat_completion
from gateway.serving.completions import create_completion
from gateway.serving.embeddings import create_embeddings
from gateway.serving.responses import create_response
from gateway.state import get_state

ERRORS = ERROR_RESPONSES
# With "stream": true the same 200 is a server-sent-event stream of chunks ending in [DONE].
SSE_CONTENT: dict[str, object] = {"text/event-stream": {"schema": {}}}


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None,
                 responses={200: {"model": ChatCompletionResponse, "content": SSE_CONTENT}, **ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(body, request)

    @router.post("/v1/completions", response_model=None,
                 responses={200: {"model": CompletionResponse, "content": SSE_CONTENT}, **ERRORS})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(body, request)

    @router.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingResponse}, **ERRORS})
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        return await create_embeddings(body, request)

    @router.post("/v1/responses", response_model=None, responses={200: {"content": SSE_CONTENT}, **ERRORS})
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        return await create_response(body, request)

    def visible_models(request: Request) -> list[ModelCard]:
        state = get_state(request)
        created = int(state.started_at)
        principal = principal_of(request)
        allowed = principal.allowed_models if principal is not None else ()  # a key sees only its models
        return [ModelCard(id=name, created=created, owned_by=f"slm-gateway:{strategy.config.type}")
                for name, strategy in state.runtime.strategies.items() if not allowed or name in allowed]

    @router.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        return ModelList(data=visible_models(request))

    @router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
    async def model(model_id: str, request: Request) -> ModelCard:
        for card in visible_models(request):
            if card.id == model_id:
                return card
        raise ModelNotFoundError(f"The model '{model_id}' does not exist", param="model")

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        state = get_state(request)
        backends = state.runtime.ready()
        local_loaded = all(ok for name, ok in backends.items() if state.runtime.backends[name].is_local)
        models = {name: s.ready() for name, s in state.runtime.strategies.items()}
        is_ready = local_loaded and not state.draining
        body = {"ready": is_ready, "draining": state.draining, "backends": backends, "models": models,
                "circuits": state.runtime.circuits(), "time": now()}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state = get_state(request)
        set_circuit_state = getattr(state.metrics, "set_circuit_state", None)
        if set_circuit_state is not None:  # breaker states are read at scrape time
            for backend, circuit in state.runtime.circuits().items():
                set_circuit_state(backend, circuit)
        if state.selfcal is not None:  # the self-calibration gauges are read from the shared store
            await state.selfcal.refresh_metrics()
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    return router
