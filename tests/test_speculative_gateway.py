"""The ``speculative`` strategy end to end: real gateways, the real openai client.

temperature=0 answers of ``speculative`` equal those of the target alone: in-process (the
shipped example policy: SmolLM2 verifying prompt-lookup drafts) and with remote verification
(a second slm-gateway process serving the target, verified over its /v1/completions through
the ``openai`` backend: prompt logprobs, token-id prompts, its timeouts and retries).
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
    "Write a Python function that adds two numbers, with a docstring.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def spec_gateway(upstream_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.inprocess import InProcessGateway

    policy: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    policy["backends"]["slm"]["threads"] = 1
    policy["backends"]["llm"] = {
        "type": "openai", "base_url": f"{upstream_gateway.url}/v1", "model": "slm",
        "supports_prefix_continuation": True, "price": {"input_per_1m": 2.5, "output_per_1m": 10.0},
    }
    policy["models"]["llm"] = {"type": "static", "backend": "llm"}
    # Forced speculation (adaptive_k off): every round verifies remotely, whatever the costs say.
    policy["models"]["spec-remote"] = {"type": "speculative", "target": "llm", "draft": {"backend": "slm"},
                                       "k": 4, "adaptive_k": False}
    policy["models"]["spec-remote-mixed"] = {"type": "speculative", "target": "llm", "k": 3, "adaptive_k": False,
                                             "draft": [{"ngram": {}}, {"backend": "slm"}]}
    policy["models"]["spec-remote-adaptive"] = {"type": "speculative", "target": "llm", "draft": {"backend": "slm"},
                                                "adaptive": {"calibration_repeats": 1}}
    server = InProcessGateway(policy, tmp_path_factory.mktemp("speculative")).start()
    try:
        yield server
    finally:
        server.stop()


def answer(client: OpenAI, model: str, question: str, max_tokens: int = 24) -> str:
    completion = client.chat.completions.create(
        model=model, temperature=0, max_tokens=max_tokens, messages=[{"role": "user", "content": question}])
    return completion.choices[0].message.content or ""


def last_record(server: Any, model: str, count: int) -> Any:
    return next(r for r in reversed(server.wait_records(count)) if r.public_model == model)


def test_example_policy_equals_the_target_alone(spec_gateway: Any) -> None:
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    for question in QUESTIONS:
        assert answer(client, "speculative", question, 48) == answer(client, "slm", question, 48), question
    record = last_record(spec_gateway, "speculative", 2 * len(QUESTIONS))
    stats = record.extra["speculative"]
    assert record.route == "speculative" and stats["mode"] == "local"
    assert stats["emitted"] == record.completion_tokens
    assert stats["costs"]["decode_ms"] > 0 and stats["roofline_speedup"] >= 1.0


def test_streaming_sends_each_round(spec_gateway: Any) -> None:
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    stream = client.chat.completions.create(model="speculative", temperature=0, max_tokens=24, stream=True,
                                            messages=[{"role": "user", "content": QUESTIONS[0]}])
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == answer(client, "slm", QUESTIONS[0])


def test_remote_verification_equals_the_target_alone(spec_gateway: Any) -> None:
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    expected = [answer(client, "llm", question) for question in QUESTIONS]
    for model in ("spec-remote", "spec-remote-mixed"):
        for question, reference in zip(QUESTIONS, expected, strict=True):
            assert answer(client, model, question) == reference, (model, question)
    record = last_record(spec_gateway, "spec-remote", 6)
    stats = record.extra["speculative"]
    assert stats["mode"] == "remote" and stats["target_calls"] == stats["rounds"] > 0
    # The target's own model drafting for it: (nearly) every draft is kept, 5 tokens per call.
    assert stats["acceptance_rate"] >= 0.9 and stats["target_passes_per_token"] <= 0.4
    verify = [c for c in record.calls if c.purpose == "verify"]
    assert len(verify) == stats["rounds"] and all(c.cost_usd > 0 and c.prompt_tokens > 0 for c in verify)
    assert sum(c.prompt_tokens for c in verify) == stats["target_prompt_tokens"]
    probes = [c for c in record.calls if c.purpose == "probe"]
    assert all(not c.used for c in probes)  # calibration: billed, not part of the answer


def test_remote_adaptive_hands_off_or_speculates_and_stays_exact(spec_gateway: Any) -> None:
    """Whatever the measured costs decide (speculate, or stream the rest from the target
    alone), the answer is the target's."""
    client = OpenAI(base_url=f"{spec_gateway.url}/v1", api_key="k", max_retries=0, timeout=300)
    reference = answer(client, "llm", QUESTIONS[0], 32)
    assert answer(client, "spec-remote-adaptive", QUESTIONS[0], 32) == reference
    stats = last_record(spec_gateway, "spec-remote-adaptive", 1).extra["speculative"]
    assert stats["costs"]["verify_cost"] and stats["emitted"] > 0
    assert stats["alone_tokens"] + stats["accepted"] + stats["rounds"] >= stats["emitted"]


def test_predicted_mode_sends_the_draft_as_prediction(model_cache: None,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cloud target that cannot verify gets the small model's whole answer as ``prediction``."""
    from loadtests.fake_upstream import FakeConfig, serve_in_thread
    from tests.inprocess import InProcessGateway

    with serve_in_thread(FakeConfig(record=True, completion_tokens=4)) as (cloud_url, cloud):
        policy = {
            "version": 1,
            "backends": {"slm": {"type": "local", "model": "smollm2", "threads": 1},
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
