"""The ``echo`` backend kind of docs/extending.md, through a real gateway process and the openai SDK.

It is one folder (gateway/backends/echo/) plus one line in policies/schema.py's BackendConfig:
the registry, ``policy check``, the strategies and the request path need nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from gateway.cli import main
from tests.gateway_process import GatewayProcess

POLICY = {
    "version": 1,
    "backends": {"parrot": {"type": "echo", "prefix": "echo:"}},
    "models": {
        "parrot": {"type": "static", "backend": "parrot"},
        # A rules model whose privacy guard keeps sensitive requests local: the echo backend says
        # it is local through its capabilities, so no rule needs to know its class.
        "guarded": {"type": "rules", "default": "parrot", "privacy": {"action": "local_only"}},
    },
}


@pytest.fixture(scope="module")
def echo_gateway() -> Iterator[GatewayProcess]:
    process = GatewayProcess(POLICY, name="echo")
    try:
        yield process.start(timeout=60)
    finally:
        process.stop()  # also when start timed out: never leave a server behind


def test_policy_check_accepts_the_new_kind(echo_gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(echo_gateway.policy_path)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_echo_answers_through_the_openai_client(echo_gateway: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{echo_gateway.url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="parrot", messages=[{"role": "user", "content": "one two three"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: one two three"
    assert answer.model == "echo" and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 4)
    assert raw.headers["x-slm-gateway-route"] == "parrot"
    assert float(raw.headers["x-slm-gateway-cost-usd"]) == 0.0


def test_echo_streams_word_by_word_and_honours_max_tokens(echo_gateway: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{echo_gateway.url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="guarded", max_tokens=2, stream=True,
        messages=[{"role": "user", "content": "mail me at jane@example.com please"}])
    # Sensitive, and kept where it is: a backend that did not declare `local` would have been
    # refused (403 sensitive_data_requires_local: this policy has no other local backend).
    assert raw.headers["x-slm-gateway-privacy"] == "local_only"
    chunks = list(raw.parse())
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == ["echo:", " mail"]
    assert chunks[-1].choices[0].finish_reason == "length"
