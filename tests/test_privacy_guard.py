"""The ``rules`` strategy's privacy guard: local-only rerouting, block, redact and restore.

Unit tests use the recording backends of tests/rules_support.py; the end-to-end tests run a real
gateway (in-process, SmolLM2) in front of a recording fake OpenAI upstream and check that no byte
of a card number reaches it.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.backend import (
    ChatMessage,
    GenerationDone,
    GenerationEvent,
    SamplingParams,
    TokenChunk,
)
from gateway.core.errors import InvalidRequestError, PermissionDeniedError
from routers.privacy.redaction import Redactor, StreamRestorer
from tests.rules_support import CARD, EMAIL, RecordingBackend, answer, build, two_backends, view

# --- privacy guard ------------------------------------------------------------------------

def privacy_config(action: str, **extra: Any) -> dict[str, Any]:
    return {"rules": [], "default": "llm", "privacy": {"action": action, **extra}}


async def test_local_only_reroutes_to_the_local_backend_and_records_no_text() -> None:
    slm, llm = two_backends()
    strategy = await build(privacy_config("local_only"), [slm, llm])
    text, ctx, _ = await answer(strategy, view(f"charge {CARD} please"))
    assert ctx.record.route == "slm" and text == f"echo: charge {CARD} please"
    assert llm.received == []
    assert ctx.record.extra["privacy"] == {"detectors": ["payment_card"], "action": "local_only",
                                           "rerouted_from": "llm"}
    assert "1111" not in repr(ctx.record.to_dict())
    # A clean request still goes to the cloud (so the assertion above can fail).
    await answer(strategy, view("what is 2+2?"))
    assert len(llm.received) == 1


async def test_local_only_without_a_local_backend_refuses_with_403() -> None:
    llm = RecordingBackend("llm", local=False)
    strategy = await build(privacy_config("local_only"), [llm])
    with pytest.raises(PermissionDeniedError) as raised:
        await answer(strategy, view(f"my email is {EMAIL}"))
    assert raised.value.status_code == 403 and "email" in raised.value.message
    assert EMAIL not in raised.value.message
    assert llm.received == []


async def test_local_only_treats_a_model_reaching_the_cloud_as_not_local() -> None:
    slm, llm = two_backends()
    config = {"rules": [{"name": "to-model", "target": "model:cloud"}], "default": "slm",
              "privacy": {"action": "local_only"}}
    strategy = await build(config, [slm, llm], statics={"cloud": "llm", "home": "slm"})
    assert strategy.is_local(strategy.resolve("model:home"))
    _, ctx, _ = await answer(strategy, view("IBAN DE89 3704 0044 0532 0130 00"))
    assert ctx.record.route == "slm" and llm.received == []


async def test_block_answers_400_before_any_call() -> None:
    slm, llm = two_backends()
    strategy = await build(privacy_config("block"), [slm, llm])
    with pytest.raises(InvalidRequestError) as raised:
        await answer(strategy, view("key AKIAIOSFODNN7EXAMPLE"))
    assert raised.value.status_code == 400 and raised.value.code == "sensitive_data_blocked"
    assert slm.received == [] and llm.received == []


async def test_per_detector_action_strongest_wins() -> None:
    slm, llm = two_backends()
    strategy = await build(privacy_config("redact", per_detector={"secret": "block"}), [slm, llm])
    with pytest.raises(InvalidRequestError):
        await answer(strategy, view(f"{EMAIL} and AKIAIOSFODNN7EXAMPLE"))
    await answer(strategy, view(f"just {EMAIL}"))
    assert EMAIL not in llm.seen_text()


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 64])
async def test_redact_round_trip_across_chunk_boundaries(chunk_size: int) -> None:
    slm = RecordingBackend("slm", local=True)
    llm = RecordingBackend("llm", local=False, chunk_size=chunk_size)
    strategy = await build(privacy_config("redact"), [slm, llm])
    question = f"Reply to {EMAIL} about card {CARD}; cc {EMAIL}."
    extra = {"metadata": {"note": f"customer {EMAIL}"}}
    text, ctx, chunks = await answer(strategy, view(question, params=SamplingParams(extra=extra)))
    sent = llm.seen_text()
    assert EMAIL not in sent and "1111" not in sent
    assert "<EMAIL_1>" in sent and "<CARD_1>" in sent and "<EMAIL_2>" not in sent  # same value, same name
    assert text == f"echo: {question}"  # every placeholder restored, whatever the chunking
    upstream_answer = f"echo: {llm.received[-1][-1].content}"
    # Token ids (and logprobs) of held-back chunks travel on with the text released later.
    assert sum(len(c.token_ids) for c in chunks) == len(range(0, len(upstream_answer), chunk_size))
    assert ctx.record.extra["privacy"] == {"detectors": ["email", "payment_card"], "action": "redact",
                                           "redacted": 2}


class ToolCallingBackend(RecordingBackend):
    """Answers with one tool call whose JSON arguments quote the last user message, streamed in
    ``chunk_size``-character pieces of the arguments (as an upstream streams them)."""

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        self.received.append(list(messages))
        question = next(m.content for m in reversed(messages) if m.role == "user")
        arguments = json.dumps({"body": question})
        yield TokenChunk("", tool_calls=({"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "send", "arguments": ""}},))
        for start in range(0, len(arguments), self.chunk_size):
            piece = arguments[start:start + self.chunk_size]
            yield TokenChunk("", tool_calls=({"index": 0, "function": {"arguments": piece}},))
        yield GenerationDone("tool_calls", 1, len(arguments), self.model_name)


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
async def test_redact_restores_placeholders_in_tool_call_arguments(chunk_size: int) -> None:
    slm = RecordingBackend("slm", local=True)
    llm = ToolCallingBackend("llm", local=False, chunk_size=chunk_size)
    strategy = await build(privacy_config("redact"), [slm, llm])
    # A PEM key spans lines: restored raw into a JSON string, its newlines would break the JSON.
    key = ("-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
           "-----END RSA PRIVATE KEY-----")
    question = f"Mail {EMAIL} the key {key}"
    _, _, chunks = await answer(strategy, view(question))
    assert EMAIL not in llm.seen_text() and "MIIBOgIBAAJBAKj34" not in llm.seen_text()
    fragments = [f for c in chunks for f in c.tool_calls]
    assert fragments[0]["function"]["name"] == "send" and fragments[0]["id"] == "call_1"
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    # The client's function receives the real values, as valid JSON (an original is escaped).
    assert json.loads(arguments) == {"body": question}


async def test_redact_skips_local_targets() -> None:
    slm, llm = two_backends()
    config = {"rules": [{"name": "home", "when": {"sensitive": True}, "target": "slm"}], "default": "llm",
              "privacy": {"action": "redact"}}
    strategy = await build(config, [slm, llm])
    text, ctx, _ = await answer(strategy, view(f"mail {EMAIL}"))
    assert ctx.record.rule == "home" and EMAIL in slm.seen_text() and text == f"echo: mail {EMAIL}"


def test_placeholders_avoid_names_already_in_the_conversation() -> None:
    redactor = Redactor(existing_text="the template says <EMAIL_1>")
    assert redactor.placeholder_for(EMAIL, "email") == "<EMAIL_2>"
    assert redactor.restore("<EMAIL_1> <EMAIL_2> <CARD_9>") == f"<EMAIL_1> {EMAIL} <CARD_9>"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["plain ", "<", ">", "<EMAIL_1>", "<CARD_1>", "<EMA", "_1", "x<y "]),
                max_size=12), st.integers(0, 2**32 - 1))
def test_stream_restorer_equals_whole_text_restore(pieces: list[str], seed: int) -> None:
    redactor = Redactor()
    redactor.placeholder_for(EMAIL, "email")
    redactor.placeholder_for(CARD, "payment_card")
    text = "".join(pieces)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
    restorer = StreamRestorer(redactor)
    out, last = [], 0
    for cut in [*cuts, len(text)]:
        out.append(restorer.feed(text[last:cut]))
        last = cut
    out.append(restorer.flush())
    assert "".join(out) == redactor.restore(text)


# --- end to end: a real gateway, SmolLM2 in-process, a recording fake cloud ---------------

@pytest.fixture(scope="module")
def privacy_gateway(
    model_cache: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any]]:
    from loadtests.fake_upstream import FakeConfig, serve_in_thread
    from tests.inprocess import InProcessGateway

    with serve_in_thread(FakeConfig(record=True, completion_tokens=4)) as (cloud_url, cloud):
        rules = {"type": "rules", "rules": [], "default": "llm"}
        policy = {
            "version": 1,
            "backends": {"slm": {"type": "local", "model": "smollm2"},
                         "llm": {"type": "openai", "base_url": f"{cloud_url}/v1", "model": "fake-model"}},
            "models": {"slm": {"type": "static", "backend": "slm"},
                       "auto": {**rules, "privacy": {"action": "local_only"}},
                       "auto-redact": {**rules, "privacy": {"action": "redact",
                                                            "per_detector": {"secret": "block"}}}},
        }
        server = InProcessGateway(policy, tmp_path_factory.mktemp("rules-e2e")).start()
        try:
            yield server, cloud
        finally:
            server.stop()


def _cloud_bytes(cloud: Any) -> bytes:
    import orjson

    return b"".join(orjson.dumps(entry) for entry in cloud.recorded)


def test_e2e_card_number_under_local_only_never_reaches_the_cloud(privacy_gateway: tuple[Any, Any]) -> None:
    from openai import OpenAI

    server, cloud = privacy_gateway
    client = OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=120)
    cloud.recorded.clear()
    card = "5555-5555-5555-4444"
    raw = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": f"Is {card} a valid card number?"}])
    completion = raw.parse()
    assert completion.model == "SmolLM2-135M-Instruct"  # the local model answered
    assert raw.headers["x-slm-gateway-route"] == "slm" and raw.headers["x-slm-gateway-rule"] == "default"
    assert raw.headers["x-slm-gateway-privacy"] == "local_only"
    assert cloud.recorded == []
    assert b"5555" not in _cloud_bytes(cloud)
    record = server.wait_records(1)[-1]
    assert record.extra["privacy"]["detectors"] == ["payment_card"] and "5555" not in repr(record.to_dict())
    # Control: the same path does reach the cloud when nothing is sensitive.
    clean = client.chat.completions.create(model="auto", max_tokens=4,
                                           messages=[{"role": "user", "content": "Is the sky blue?"}])
    assert clean.model == "fake-model" and len(cloud.recorded) == 1


def test_e2e_redact_sends_placeholders_and_block_refuses(privacy_gateway: tuple[Any, Any]) -> None:
    import openai

    server, cloud = privacy_gateway
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=120)
    cloud.recorded.clear()
    stream = client.chat.completions.create(
        model="auto-redact", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": f"Email {EMAIL} about IBAN GB82WEST12345698765432"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    sent = _cloud_bytes(cloud)
    assert b"<EMAIL_1>" in sent and b"<IBAN_1>" in sent
    assert EMAIL.encode() not in sent and b"WEST1234" not in sent
    with pytest.raises(openai.BadRequestError, match="secret"):
        client.chat.completions.create(model="auto-redact", max_tokens=4,
                                       messages=[{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE broke"}])
    assert len(cloud.recorded) == 1
