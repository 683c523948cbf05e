"""The ``speculative`` strategy end to end: real gateways, the real openai client.

temperature=0 answers of ``speculative`` equal those of the target alone, with in-process
verification (the shipped example policy: SmolLM2 self-speculation) and with remote
verification (a second slm-gateway process as the target, over /v1/completions).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from tests.gateway_process import GatewayProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "policies" / "examples" / "speculative.yaml"
QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that adds two numbers.",
]


@pytest.fixture(scope="module")
def spec_gateway(upstream_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.inprocess import InProcessGateway

    policy: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    policy["backends"]["draft24"] = {"type": "local", "model": "smollm2", "num_layers": 24}
    policy["backends"]["llm"] = {
        "type": "openai", "base_url": f"{upstream_gateway.url}/v1", "model": "slm",
        "supports_prefix_continuation": True, "price": {"input_per_1m": 2.5, "output_per_1m": 10.0},
    }
    policy["models"]["llm"] = {"type": "static", "backend": "llm"}
    policy["models"]["spec-remote"] = {"type": "speculative", "target": "llm", "draft": {"backend": "draft24"},
                                       "k": 3, "adaptive_k": False}
    policy["models"]["spec-remote-full"] = {"type": "speculative", "target": "llm", "draft": {"backend": "slm"},
                                            "k": 4, "adaptive_k": False}
    server = InProcessGateway(policy, tmp_path_factory.mktemp("speculative")).start()
    try:
        yield server
    finally:
        server.stop()


def answer(client: OpenAI, model: str, question: str, **kwargs: Any) -> str:
    completion = client.chat.completions.create(
        model=model, temperature=0, max_tokens=16, messages=[{"role": "user", "content": question}], **kwargs)
    return completion.choices[0].message.content or ""


def test_in_process_self_speculation_equals_target_alone(spec_gateway: Any) -> None:
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    for question in QUESTIONS:
        assert answer(client, "speculative", question) == answer(client, "slm", question), question
    record = next(r for r in reversed(spec_gateway.wait_records(2 * len(QUESTIONS))) if r.public_model == "speculative")
    stats = record.extra["speculative"]
    assert record.route == "speculative" and stats["mode"] == "local"
    assert stats["rounds"] == stats["target_forward_passes"] > 0 and stats["emitted"] == record.completion_tokens
    assert {c.purpose for c in record.calls} == {"verify", "draft"}


def test_streaming_sends_each_round(spec_gateway: Any) -> None:
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    stream = client.chat.completions.create(model="speculative", temperature=0, max_tokens=16, stream=True,
                                            messages=[{"role": "user", "content": QUESTIONS[1]}])
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == answer(client, "slm", QUESTIONS[1])


def test_remote_verification_equals_target_alone(spec_gateway: Any) -> None:
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    expected = [answer(client, "llm", question) for question in QUESTIONS]
    for model in ("spec-remote", "spec-remote-full"):
        for question, reference in zip(QUESTIONS, expected, strict=True):
            assert answer(client, model, question) == reference, (model, question)
    records = spec_gateway.wait_records(6)
    record = next(r for r in reversed(records) if r.public_model == "spec-remote-full")
    stats = record.extra["speculative"]
    assert stats["mode"] == "remote" and stats["target_calls"] == stats["rounds"]
    # The full model drafting for itself is always right: 4 drafts + the bonus per call.
    assert stats["acceptance_rate"] == 1.0 and stats["target_passes_per_token"] <= 0.25
    verify = next(c for c in record.calls if c.purpose == "verify")
    assert verify.cost_usd > 0  # the remote target's billed prompt tokens over all rounds


def test_predicted_mode_sends_the_draft_as_prediction(model_cache: None,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cloud target that cannot verify gets the small model's whole answer as ``prediction``."""
    from loadtests.fake_upstream import FakeConfig, serve_in_thread
    from tests.inprocess import InProcessGateway

    with serve_in_thread(FakeConfig(record=True, completion_tokens=4)) as (cloud_url, cloud):
        policy = {
            "version": 1,
            "backends": {"slm": {"type": "local", "model": "smollm2"},
                         "cloud": {"type": "openai", "base_url": f"{cloud_url}/v1", "model": "fake-model"}},
            "models": {"predicted": {"type": "speculative", "target": "cloud", "draft": {"backend": "slm"}}},
        }
        server = InProcessGateway(policy, tmp_path_factory.mktemp("speculative-predicted")).start()
        try:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=300)
            completion = client.chat.completions.create(
                model="predicted", max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "Say hello."}])
            assert completion.model == "fake-model"
            sent = cloud.recorded[-1]["body"]
            assert sent["prediction"]["type"] == "content" and sent["prediction"]["content"]
            record = server.wait_records(1)[-1]
            assert record.route == "speculative" and record.extra["speculative"]["mode"] == "predicted"
            assert [c.purpose for c in record.calls] == ["draft", "answer"]
        finally:
            server.stop()
