"""Shared fixtures: real gateway processes on loopback, the real model, the real openai client.

``upstream_gateway`` is a second slm-gateway process serving SmolLM2: the OpenAI-compatible
"cloud" LLM of the tests. ``gateway`` is the gateway under test, with ``slm`` in-process and
``llm`` behind that upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from gateway.backends.local.loader import ensure_hf_directory, resolve_source
from tests.gateway_process import GatewayProcess, smollm2_policy, two_tier_policy


@pytest.fixture(scope="session")
def model_cache() -> None:
    """Convert the GGUF once, before any process races to do it."""
    ensure_hf_directory(resolve_source("smollm2"))


@pytest.fixture(scope="session")
def upstream_gateway(model_cache: None) -> Iterator[GatewayProcess]:
    policy = smollm2_policy()
    policy["backends"]["slm"]["served_name"] = "upstream-smollm2"
    process = GatewayProcess(policy, name="upstream").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gateway(upstream_gateway: GatewayProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(two_tier_policy(upstream_gateway.url), name="main").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="test-key", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) in the test process, for checks against a direct forward pass."""
    from gateway.backends.local.loader import load_model

    return load_model("smollm2")
