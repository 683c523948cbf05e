"""OpenAI's own openapi document drives schemathesis against the gateway: createChatCompletion,
createCompletion, listModels, retrieveModel, createEmbedding and createResponse, checked for
``not_a_server_error`` and ``response_schema_conformance``.

The document is a subset of github.com/openai/openai-openapi (MIT licence), cut by
``scripts/openai_spec_subset.py`` to these operations and the components they reach. The one
narrowing made here: request ``model`` fields (and retrieveModel's path) are the gateway's own
model names, so generated requests reach the strategy and an upstream. The upstream is the
fake one (``loadtests/fake_upstream.py``, instant), relayed through an ``openai`` backend.
Deviations the document cannot see (a 400 for what the gateway does not serve, e.g. built-in
Responses tools) are listed in docs/api.md; a 400 is allowed, a 5xx or a body that breaks the
document's response schema is not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import GatewayProcess

SPEC = Path(__file__).parent / "data" / "openai-openapi-subset.json"
CHAT_MODELS = ["fake"]
EMBED_MODELS = ["fake-embed"]
REQUESTS = {"CreateChatCompletionRequest": CHAT_MODELS, "CreateCompletionRequest": CHAT_MODELS,
            "CreateResponse": CHAT_MODELS, "CreateEmbeddingRequest": EMBED_MODELS}
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]


def _narrow_model(node: Any, schemas: dict[str, Any], names: list[str], seen: set[str]) -> None:
    """Set ``properties.model`` to an enum of ``names`` wherever the request schema defines it."""
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        # A private copy of the part the request composes (ResponseProperties is a response's too).
        name = ref.rsplit("/", 1)[-1]
        private = f"{name}__request"
        if private not in seen:
            seen.add(private)
            schemas[private] = copy.deepcopy(schemas[name])
            _narrow_model(schemas[private], schemas, names, seen)
        node["$ref"] = f"#/components/schemas/{private}"
        return
    if "model" in (node.get("properties") or {}):
        node["properties"]["model"] = {"type": "string", "enum": names}
    for key in ("allOf", "anyOf", "oneOf"):
        for part in node.get(key) or []:
            _narrow_model(part, schemas, names, seen)


def _events_as_items(operation: dict[str, Any]) -> None:
    """Deviation (docs/api.md): the document's ``text/event-stream`` schema describes each event's
    JSON ``data``, OpenAPI 3.1 style; schemathesis reads it as OpenAPI 3.2 does (the schema of
    the event object itself). Restated as 3.2's ``itemSchema`` with the same payload schema, and
    OpenAI's own ``[DONE]`` sentinel allowed as the last data."""
    for response in (operation.get("responses") or {}).values():
        media = (response.get("content") or {}).get("text/event-stream")
        if isinstance(media, dict) and "schema" in media:
            payload = media.pop("schema")
            media["itemSchema"] = {"type": "object", "properties": {"data": {"anyOf": [
                {"const": "[DONE]"}, {"contentMediaType": "application/json", "contentSchema": payload}]}}}


def narrowed_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SPEC.read_text())
    schemas = document["components"]["schemas"]
    for request_name, names in REQUESTS.items():
        # A private copy per request: shared parts (ModelResponseProperties...) are narrowed only here.
        private = copy.deepcopy(schemas[request_name])
        schemas[request_name] = private
        _narrow_model(private, schemas, names, set())
        if request_name == "CreateResponse":  # optional in the document; the gateway must know the model
            private["required"] = sorted({*private.get("required", []), "model"})
    # Deviation (docs/api.md): the document types an embedding as an array only, but OpenAI itself
    # answers encoding_format=base64 with a string; the gateway does the same.
    embedding = schemas["Embedding"]["properties"]["embedding"]
    schemas["Embedding"]["properties"]["embedding"] = {"anyOf": [embedding, {"type": "string"}]}
    for path in document["paths"].values():
        for operation in path.values():
            _events_as_items(operation)
    for parameter in document["paths"]["/models/{model}"]["get"]["parameters"]:
        if parameter.get("name") == "model":
            parameter["schema"] = {"type": "string", "enum": CHAT_MODELS + EMBED_MODELS + ["missing-model"]}
    return document


@pytest.fixture(scope="module")
def spec_gateway() -> Iterator[GatewayProcess]:
    with serve_in_thread(FakeConfig(completion_tokens=4)) as (upstream, _):
        policy = {
            "version": 1,
            "backends": {"fake": {"type": "openai", "base_url": f"{upstream}/v1", "model": "fake-model"}},
            "models": {"fake": {"type": "static", "backend": "fake"},
                       "fake-embed": {"type": "static", "backend": "fake"}},
        }
        process = GatewayProcess(policy, name="openai-spec").start(timeout=60)
        yield process
        process.stop()


def _steer(operation_id: str, case: Any) -> None:
    """Half the Responses bodies without input get one, so they reach the model (the document makes
    input optional because a stored prompt or a conversation may stand in, which the gateway
    answers with a 400; that half stays as generated)."""
    body = case.body
    if operation_id == "createResponse" and isinstance(body, dict) and "input" not in body \
            and hash(repr(sorted(body))) % 2 == 0:
        body["input"] = "hi"


OPERATION_IDS = ["createChatCompletion", "createCompletion", "listModels", "retrieveModel", "createEmbedding",
                 "createResponse"]


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_openai_document_operation(spec_gateway: GatewayProcess, operation_id: str) -> None:
    api = schemathesis.openapi.from_dict(narrowed_document())
    operation = api.find_operation_by_id(operation_id)
    failures: list[str] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        _steer(operation_id, case)
        try:
            case.call_and_validate(base_url=f"{spec_gateway.url}/v1", timeout=30, checks=CHECKS)
        except Exception as exc:  # collect, so one run reports every distinct failure
            failures.append(f"{type(exc).__name__}: {str(exc)[:800]}")
            raise

    try:
        fuzz()
    finally:
        if failures:
            print("\n".join(failures[:3]))
