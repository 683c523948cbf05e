"""Agent frameworks against the gateway: langchain-openai (``bind_tools``,
``with_structured_output`` in all three methods) and litellm, over a recording HTTP upstream
relayed by the gateway, and plain chat on the real local model."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from loadtests.fake_upstream import FakeConfig, FakeUpstream, serve_in_thread
from tests.inprocess import InProcessGateway

# litellm fetches its model price map from the internet at import unless told to use its own copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
langchain_openai = pytest.importorskip("langchain_openai")
litellm = pytest.importorskip("litellm")


class Weather(BaseModel):
    """Weather in a city."""

    city: str
    days: int


class Flag(BaseModel):
    ok: bool


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessGateway, FakeUpstream]]:
    with serve_in_thread(FakeConfig(record=True, completion_tokens=4)) as (url, fake):
        policy = {"version": 1,
                  "backends": {"up": {"type": "openai", "base_url": f"{url}/v1", "model": "fake-model"},
                               "slm": {"type": "local", "model": "smollm2", "threads": 1,
                                       "defaults": {"temperature": 0.2, "top_p": 0.9}}},
                  "models": {"up": {"type": "static", "backend": "up"}, "slm": {"type": "static", "backend": "slm"},
                             "auto": {"type": "cascade", "tiers": [{"backend": "slm", "threshold": -1.0},
                                                                   {"backend": "up"}]}}}
        process = InProcessGateway(policy, tmp_path_factory.mktemp("clients")).start()
        try:
            yield process, fake
        finally:
            process.stop()


def chat_model(gateway: InProcessGateway, model: str = "up") -> object:
    return langchain_openai.ChatOpenAI(model=model, base_url=f"{gateway.url}/v1", api_key="sk-none",
                                       max_retries=0, timeout=60)


def test_langchain_bind_tools(gateway: tuple[InProcessGateway, FakeUpstream]) -> None:
    process, fake = gateway
    llm = chat_model(process).bind_tools([Weather], tool_choice="Weather")  # type: ignore[attr-defined]
    message = llm.invoke("Weather in Oslo for 3 days?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("Weather", {"city": "fake", "days": 1})]
    sent = fake.recorded[-1]["body"]
    assert sent["tools"][0]["function"]["name"] == "Weather"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}
    streamed = None
    for chunk in llm.stream("Weather in Oslo?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.tool_calls[0]["args"] == {"city": "fake", "days": 1}


@pytest.mark.parametrize("method, schema, expected", [
    ("function_calling", Weather, Weather(city="fake", days=1)),
    ("json_schema", Weather, Weather(city="fake", days=1)),
    ("json_mode", Flag, Flag(ok=True)),
])
def test_langchain_with_structured_output(gateway: tuple[InProcessGateway, FakeUpstream], method: str,
                                          schema: type[BaseModel], expected: BaseModel) -> None:
    process, fake = gateway
    structured = chat_model(process).with_structured_output(schema, method=method)  # type: ignore[attr-defined]
    assert structured.invoke("Return it as JSON.") == expected
    sent = fake.recorded[-1]["body"]
    if method == "function_calling":
        assert sent["tools"][0]["function"]["name"] == schema.__name__
    else:
        assert sent["response_format"]["type"] == ("json_schema" if method == "json_schema" else "json_object")


def test_litellm_tools_and_text(gateway: tuple[InProcessGateway, FakeUpstream]) -> None:
    process, _ = gateway
    common = {"api_base": f"{process.url}/v1", "api_key": "sk-none", "num_retries": 0}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    reply = litellm.completion(model="openai/up", messages=[{"role": "user", "content": "Weather?"}], tools=tools,
                               **common)
    calls = reply.choices[0].message.tool_calls
    assert calls[0].function.name == "get_weather" and reply.choices[0].finish_reason == "tool_calls"
    local = litellm.completion(model="openai/slm", messages=[{"role": "user", "content": "Say hello."}],
                               max_tokens=8, **common)
    assert local.choices[0].message.content and local.usage.completion_tokens <= 8


def test_langchain_plain_chat_on_the_local_model(gateway: tuple[InProcessGateway, FakeUpstream]) -> None:
    process, _ = gateway
    message = chat_model(process, "slm").invoke("Say hello.", max_tokens=8)  # type: ignore[attr-defined]
    assert message.content and message.response_metadata["model_name"] == "SmolLM2-135M-Instruct"


def test_cascade_sends_tools_to_the_tier_that_honours_them(gateway: tuple[InProcessGateway, FakeUpstream]) -> None:
    process, fake = gateway
    before = len(process.sink.records)
    llm = chat_model(process, "auto").bind_tools([Weather], tool_choice="Weather")  # type: ignore[attr-defined]
    message = llm.invoke("Weather in Oslo?", max_tokens=120)
    assert message.tool_calls[0]["name"] == "Weather"
    Weather.model_validate(message.tool_calls[0]["args"])
    record = process.wait_records(before + 1)[-1]
    # The in-process small tier honours tools now (tests/test_tools_local.py): it is tried first,
    # and the tools reach the large tier too when its score escalates.
    assert "cascade_skipped" not in record.extra and record.calls[0].backend == "slm"
    if record.escalated:
        assert fake.recorded[-1]["body"]["tools"][0]["function"]["name"] == "Weather"
    plain = chat_model(process, "auto").invoke("Say hi.", max_tokens=4)  # type: ignore[attr-defined]
    assert plain.content is not None  # no tools: the small tier answers first, as before

