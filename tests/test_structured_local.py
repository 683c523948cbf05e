"""Structured outputs on the local engines (issue 19): grammar-constrained decoding with
llguidance on real SmolLM2, on both engines and through the real gateway with the real openai
SDK (``chat.completions.parse``) and langchain-openai's ``with_structured_output``.

The tools engineer's tests of tool rendering / parsing are tests/test_tools_local.py; here the
constraint itself: every answer parses and validates against its schema, streamed or not, on
chat and completions, next to unconstrained sequences in the same batch; unenforceable and
pathological schemas are 400s on ``response_format``; speculative decoding under a schema
keeps the target's own constrained answer, its drafts constrained by the same grammar.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import numpy.typing as npt
import pytest
from openai import OpenAI
from pydantic import BaseModel

from gateway.backends.local.backend import LocalModelBackend
from gateway.core.backend import ChatMessage, CompletionPrompt, SamplingParams, TokenChunk
from gateway.core.errors import InvalidRequestError
from gateway.core.record import RequestRecord
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext
from gateway.core.structured.grammar import Constraint, GrammarCompiler, grammar_for
from gateway.core.structured.tool_calls import ToolCall, invalid_arguments
from loadtests.speculative_models import agreement
from routers.speculative.config import SpeculativeStrategy
from routers.speculative.strategy import Speculative
from tests.inprocess import InProcessGateway
from tests.local_engine_support import ENGINES, chat, collect, complete, started

CITY = {"type": "object", "properties": {
    "name": {"type": "string"}, "country": {"type": "string"}, "population_millions": {"type": "number"},
    "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
    "required": ["name", "country", "population_millions", "landmarks"], "additionalProperties": False}
ASK = "Describe Paris as JSON with its name, country, population in millions and up to three landmarks."


def json_schema_format(schema: dict[str, Any], name: str = "city") -> Any:  # the SDK's typed dict
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


class Person(BaseModel):
    name: str
    age: int
    city: str


EXTRACT = "Alice is 30 years old and lives in Oslo. Extract her name, age and city."


# The transformers engine (fp32 torch, the numerical reference) takes ~4x llama.cpp's time here: slow tier.
@pytest.fixture(scope="module", params=[pytest.param(e, marks=[pytest.mark.slow] if e == "transformers" else [])
                                        for e in ENGINES])
async def backend(request: pytest.FixtureRequest, model_cache: None) -> AsyncIterator[LocalModelBackend]:
    async with started(request.param, context_length=2048) as backend:
        yield backend


# --- the engines ----------------------------------------------------------------------------


async def test_schema_constrained_answers_validate_on_both_engines(backend: LocalModelBackend) -> None:
    fmt = {"response_format": json_schema_format(CITY)}
    greedy = await chat(backend, ASK, max_tokens=120, extra=fmt)
    sampled = await chat(backend, ASK, max_tokens=120, temperature=0.9, top_p=0.95, seed=5, extra=fmt)
    for result in (greedy, sampled):
        assert result.done is not None and result.done.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), CITY)
    free = await chat(backend, ASK, max_tokens=40)
    assert not _is_json(free.text)  # SmolLM2 unconstrained answers in prose: the grammar made the JSON


async def test_json_object_and_completions_prompt(backend: LocalModelBackend) -> None:
    result = await chat(backend, "Return a JSON object with the name and the colour of a ripe banana.", max_tokens=80,
                        extra={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(result.text), dict), result.text
    completed = await complete(backend, CompletionPrompt(text="The weather in Oslo today:"), max_tokens=80,
                               extra={"response_format": json_schema_format(
                                   {"type": "object", "properties": {"celsius": {"type": "integer"}},
                                    "required": ["celsius"], "additionalProperties": False})})
    assert set(json.loads(completed.text)) == {"celsius"}


async def test_constrained_and_free_rows_share_a_batch(backend: LocalModelBackend) -> None:
    """Each sequence carries its own constraint: the unconstrained neighbour is unchanged."""
    alone = await chat(backend, "List three colours.", max_tokens=24)
    fmt = {"response_format": json_schema_format(CITY)}
    constrained, free, other = await asyncio.gather(
        chat(backend, ASK, max_tokens=120, extra=fmt),
        chat(backend, "List three colours.", max_tokens=24),
        chat(backend, "Name a fruit as JSON.", max_tokens=60,
             extra={"response_format": json_schema_format({"type": "object", "properties": {
                 "fruit": {"type": "string", "enum": ["apple", "pear"]}}, "required": ["fruit"],
                 "additionalProperties": False}, "fruit")}))
    jsonschema.validate(json.loads(constrained.text), CITY)
    assert json.loads(other.text)["fruit"] in ("apple", "pear")
    assert free.token_ids == alone.token_ids


async def test_forced_tool_call_is_well_formed(backend: LocalModelBackend) -> None:
    """tool_choice "required" runs through the same constraint (the tools engineer renders the
    tools into the prompt; here only the engine's enforcement is under test)."""
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"], "additionalProperties": False}}}
    extra = {"tools": [weather], "tool_choice": "required", "parallel_tool_calls": False}
    fragments: list[dict[str, Any]] = []
    async for event in backend.stream_chat([ChatMessage(role="user", content="Weather in Oslo for 2 days?")],
                                           SamplingParams(max_tokens=80, temperature=0.0, extra=extra)):
        if isinstance(event, TokenChunk):
            fragments += event.tool_calls
        else:
            assert event.finish_reason == "tool_calls"
    assert [f["function"]["name"] for f in fragments] == ["get_weather"]
    call = ToolCall(fragments[0]["function"]["name"], fragments[0]["function"]["arguments"], fragments[0]["id"])
    assert invalid_arguments(call, [weather]) is None


class DeadEnd(Constraint):
    """A real constraint that allows nothing after a few tokens (a grammar at a dead end: the
    fault llguidance reports when a step exceeds its resource limits)."""

    def __init__(self, real: Constraint, after: int) -> None:
        super().__init__(real.matcher, real.vocab_size)
        self.left = after

    def allowed(self) -> npt.NDArray[np.bool_]:
        self.left -= 1
        return super().allowed() if self.left >= 0 else np.zeros(self.vocab_size, dtype=np.bool_)


async def test_a_grammar_dead_end_is_a_400_not_a_backend_failure(backend: LocalModelBackend,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    params = SamplingParams(max_tokens=40, temperature=0.0, extra={"response_format": json_schema_format(CITY)})
    real = await backend.constraint(params)
    assert real is not None

    async def dead_end(_: SamplingParams) -> Constraint:
        return DeadEnd(real, after=3)

    monkeypatch.setattr(backend, "constraint", dead_end)
    with pytest.raises(InvalidRequestError) as caught:
        await collect(backend.stream_chat([ChatMessage(role="user", content=ASK)], params))
    assert caught.value.param == "response_format" and "allows no next token" in caught.value.message
    monkeypatch.undo()
    assert (await chat(backend, "Say hello.", max_tokens=4)).done is not None  # the engine serves on


async def test_compiled_grammars_are_cached_in_a_bounded_lru(backend: LocalModelBackend) -> None:
    grammars = backend.grammars
    params = SamplingParams(extra={"response_format": json_schema_format(CITY)})
    await backend.constraint(params)
    before = grammars.compiles
    first, second = await backend.constraint(params), await backend.constraint(params)
    assert grammars.compiles == before  # cached: no compile for a schema seen before
    assert first is not None and second is not None
    start = second.allowed()
    assert first.advance(int(np.flatnonzero(start)[0]))  # one sequence's state is its own
    assert np.array_equal(second.allowed(), start) and not np.array_equal(first.allowed(), start)
    for size in range(grammars.capacity + 2):
        await backend.constraint(SamplingParams(extra={"response_format": json_schema_format(
            {"type": "array", "items": {"type": "integer"}, "maxItems": size + 1})}))
    assert len(grammars._compiled) == grammars.capacity


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"x": {"type": "string", "format": "no-such-format"}}}, "format"),
    ({"type": "string", "pattern": "(a|b"}, "regex"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "not"),
    (_nested(200), "recursion"),
    (_nested(5000), "nested too deeply"),
])
async def test_unenforceable_schemas_are_400s(backend: LocalModelBackend, schema: dict[str, Any],
                                              words: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await backend.constraint(SamplingParams(extra={"response_format": json_schema_format(schema)}))
    assert caught.value.param == "response_format" and words in caught.value.message.lower()


async def test_slow_compiles_are_refused_once(backend: LocalModelBackend) -> None:
    """llguidance's limits do not bound every compile (optional properties grow it
    quadratically): one slower than the compiler's limit is a 400, and the refusal is cached, so
    sending the schema again costs nothing."""
    compiler = GrammarCompiler(backend.grammars.tokenizer, backend.grammars.vocab_size, max_compile_s=0.02)
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}}
    grammar = grammar_for({"response_format": json_schema_format(schema)})
    assert grammar is not None
    for _ in range(2):
        with pytest.raises(InvalidRequestError) as caught:
            compiler.constraint(grammar)
        assert caught.value.param == "response_format" and "to compile" in caught.value.message
    assert compiler.compiles == 1


async def test_concurrent_requests_for_one_schema_share_its_compile(backend: LocalModelBackend) -> None:
    compiler = GrammarCompiler(backend.grammars.tokenizer, backend.grammars.vocab_size)
    schema = {"type": "object", "properties": {f"q{i}": {"type": "integer"} for i in range(600)}}
    grammar = grammar_for({"response_format": json_schema_format(schema)})
    assert grammar is not None
    constraints = await asyncio.gather(*(asyncio.to_thread(compiler.constraint, grammar) for _ in range(3)))
    assert compiler.compiles == 1 and len({id(c.matcher) for c in constraints}) == 3


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


# --- through the gateway: the openai SDK and langchain ----------------------------------------


@pytest.fixture(scope="module")
def gateway(model_cache: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    policy = {
        "version": 1,
        "backends": {"slm": {"type": "local", "model": "smollm2", "threads": 1,
                             "defaults": {"temperature": 0.2, "top_p": 0.9}}},
        "models": {"slm": {"type": "static", "backend": "slm"},
                   "spec": {"type": "speculative", "target": "slm", "draft": {"ngram": {}}}},
    }
    server = InProcessGateway(policy, tmp_path_factory.mktemp("structured")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: InProcessGateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-none", max_retries=0, timeout=120)


def test_openai_parse_with_a_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(model="slm", messages=[{"role": "user", "content": EXTRACT}],
                                               response_format=Person, max_tokens=100)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person) and completion.choices[0].finish_reason == "stop"
    assert parsed.age == 30  # the answer is the model's own, within the schema


def test_responses_parse_with_a_pydantic_model(client: OpenAI) -> None:
    """/v1/responses' ``text.format`` becomes chat's response_format: constrained the same way."""
    response = client.responses.parse(model="slm", input=EXTRACT, text_format=Person, max_output_tokens=100)
    assert isinstance(response.output_parsed, Person) and response.status == "completed"


def test_streamed_json_schema_validates(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="slm", messages=[{"role": "user", "content": ASK}], response_format=json_schema_format(CITY),
        max_tokens=120, temperature=0, stream=True)
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), CITY)


def test_completions_endpoint_takes_response_format(client: OpenAI) -> None:
    reply = client.completions.create(model="slm", prompt="A JSON list of two prime numbers:", max_tokens=30,
                                      extra_body={"response_format": json_schema_format(
                                          {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                                           "maxItems": 2}, "primes")})
    assert len(json.loads(reply.choices[0].text)) == 2


def test_bad_schema_is_a_400_envelope(gateway: InProcessGateway) -> None:
    body = {"model": "slm", "messages": [{"role": "user", "content": "hi"}],
            "response_format": json_schema_format({"type": "string", "pattern": "(a|b"})}
    for stream in (False, True):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=60)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "response_format"


def test_speculative_models_speculate_under_the_schema(client: OpenAI, gateway: InProcessGateway) -> None:
    before = len(gateway.sink.records)
    reply = client.chat.completions.create(model="spec", messages=[{"role": "user", "content": ASK}],
                                           response_format=json_schema_format(CITY), max_tokens=120, temperature=0)
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), CITY)
    record = gateway.wait_records(before + 1)[-1]
    assert record.extra["speculative_constrained"] == "response_format" and "speculative" in record.extra


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_langchain_with_structured_output_on_the_local_model(gateway: InProcessGateway, method: str) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model="slm", base_url=f"{gateway.url}/v1", api_key="sk-none", max_retries=0,
                                      timeout=60, max_tokens=100)
    if method == "json_schema":
        structured = llm.with_structured_output(Person, method="json_schema")
        assert isinstance(structured.invoke(EXTRACT), Person)
    else:  # JSON mode guarantees a JSON object, not a schema: ask for a dict back
        structured = llm.with_structured_output(Person.model_json_schema(), method="json_mode")
        answer = structured.invoke(EXTRACT + " Answer with a JSON object.")
        assert isinstance(answer, dict), answer


# --- speculative decoding under a grammar (routers/speculative/constrained.py) ---------------


def speculative(target: LocalModelBackend, small: LocalModelBackend | None, **config: Any) -> Speculative:
    backends: dict[str, Any] = {"slm": target} | ({"small": small} if small is not None else {})
    spec = SpeculativeStrategy.model_validate({"type": "speculative", "target": "slm", "adaptive_k": False,
                                               "k": 4, **config})
    return Speculative("spec", spec, GatewayResources(backends=backends, prices={}))


async def speculate(spec: Speculative, **params: Any) -> tuple[list[int], RequestRecord]:
    record = RequestRecord("r", "spec", "/v1/chat/completions", stream=False)
    view = ChatRequestView(messages=[ChatMessage(role="user", content=ASK)], stream=False, params=SamplingParams(
        max_tokens=120, extra={"response_format": json_schema_format(CITY)}, **params))
    tokens = [t async for e in spec.chat(view, RequestContext(record, spec.resources))
              if isinstance(e, TokenChunk) for t in e.token_ids]
    return tokens, record


@pytest.fixture(scope="module")
async def llamacpp(model_cache: None) -> AsyncIterator[LocalModelBackend]:
    async with started("llamacpp", context_length=2048) as backend:
        yield backend


async def test_speculation_keeps_the_target_constrained_answer(llamacpp: LocalModelBackend) -> None:
    """Greedy under the schema: the target's own constrained answer, token for token (or parted
    at a float tie), with prompt-lookup drafts cut to what the grammar allows."""
    reference = await chat(llamacpp, ASK, max_tokens=120, extra={"response_format": json_schema_format(CITY)})
    spec = speculative(llamacpp, None, draft={"ngram": {"max_n": 3, "k": 8}})
    await spec.start()
    tokens, record = await speculate(spec, temperature=0.0)
    scorer = llamacpp.token_scorer()
    assert scorer is not None
    prompt = await scorer.tokenize(await llamacpp.render_chat_prompt([ChatMessage(role="user", content=ASK)]) or "")
    same = await agreement(scorer, prompt, tokens, reference.token_ids)
    assert same.identical or same.tie, same
    jsonschema.validate(json.loads(llamacpp.engine.decode(tokens)), CITY)
    assert record.extra["speculative_constrained"] == "response_format"
    assert record.extra["speculative"]["rounds"] > 0


async def test_the_draft_model_is_constrained_by_the_same_grammar(llamacpp: LocalModelBackend) -> None:
    """SmolLM2 drafting for itself under the schema keeps every draft: were its drafts free, the
    grammar's choices (the keys, the separators) would differ from them and be rejected."""
    async with started("llamacpp", context_length=2048) as small:
        spec = speculative(llamacpp, small, draft={"backend": "small"})
        await spec.start()
        tokens, record = await speculate(spec, temperature=0.0)
        sampled, _ = await speculate(spec, temperature=0.8, top_p=0.95, seed=3)
    stats = record.extra["speculative"]
    assert stats["drafted"] > 0 and stats["acceptance_rate"] == 1.0
    jsonschema.validate(json.loads(llamacpp.engine.decode(tokens)), CITY)
    json.loads(llamacpp.engine.decode(sampled))  # sampled rounds (rejection rule) stay in the grammar
