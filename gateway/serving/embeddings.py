"""POST /v1/embeddings: the model's strategy hands the inputs to one embedding backend (the
in-process MiniLM, or an upstream's /embeddings, relayed), recorded like any call."""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response

from gateway.auth.enforcement import admit_request
from gateway.auth.estimate import text_tokens
from gateway.auth.principal import principal_of
from gateway.core.embeddings_protocol import EmbeddingRequest, embedding_body
from gateway.serving.scope import RequestScope
from gateway.serving.streaming import collected
from gateway.state import get_state


async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    state = get_state(request)
    strategy = state.runtime.strategy(body.model)
    inputs = body.inputs()
    estimate = sum(text_tokens(i) if isinstance(i, str) else len(i) for i in inputs)
    ticket = await admit_request(request, body.model, estimate, 0)
    principal = principal_of(request)
    scope = RequestScope(state, strategy, "embeddings", False, principal.key_id if principal else None, ticket)
    result = await collected(request, scope, strategy.embed(inputs, body.relayed(), scope.ctx))
    if result is None:
        return Response(status_code=499)
    usage = (result.prompt_tokens, 0)
    scope.settle(usage)
    payload = embedding_body(result.vectors, result.model, result.prompt_tokens, body.encoding_format)
    headers = scope.headers() | scope.cost_headers()
    await scope.finish(usage)
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)
