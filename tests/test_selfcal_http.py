"""Self-calibration end to end (issue 22): real gateway processes with the service's real shadow
runner and embedded (SQLite) self-calibration store, SmolLM2 in-process as the small tier and a
second gateway process serving SmolLM2 over HTTP as the large one, through the real openai client.

The cascade starts escalating everything; the escalated pairs are labelled for free; after
``refit_every`` labels the recalibrator certifies a looser threshold and stores it; the same
question is then kept on the small tier — by this replica and by a second replica that shares
the store and never labelled anything — and the kept answer is shadowed to the large tier in
the background: the client's record holds only the small call, the shadow job's cost shows in
the usage API as shadow spend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.gateway_process import GatewayProcess, two_tier_policy

QUESTIONS = ["Name the largest planet in the solar system.", "What is the capital of France?",
             "How many legs does a spider have?", "What colour is the sky on a clear day?",
             "Who wrote Romeo and Juliet?", "What is two plus two?", "Name a primary colour.",
             "What is the boiling point of water in Celsius?", "Which animal is known as man's best friend?",
             "What is the opposite of hot?", "How many days are in a week?", "What do bees make?"]
LABELS_TO_FIT = len(QUESTIONS)


def selfcal_policy(upstream_url: str) -> dict[str, Any]:
    policy = two_tier_policy(upstream_url)
    policy["backends"]["llm"]["timeouts"] = {"connect": 5.0, "first_token": 180.0, "total": 300.0, "idle": 180.0}
    policy["models"]["cascade"] = {"type": "cascade", "tiers": [
        {"backend": "slm", "scorer": "mean_logprob", "threshold": 1e9,  # escalates everything at first
         "self_calibration": {"judge": {"type": "normalized"}, "sample_rate": 1.0, "max_disagreement": 0.3,
                              "min_labels": LABELS_TO_FIT, "window": 50, "refit_every": LABELS_TO_FIT,
                              "candidates": 5, "max_concurrent": 2, "budget_usd_per_day": 1.0,
                              "refresh_seconds": 0.0}},
        {"backend": "llm"}]}
    return policy


@pytest.fixture(scope="module")
def replicas(upstream_gateway: GatewayProcess) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    first = GatewayProcess(selfcal_policy(upstream_gateway.url), name="selfcal-a").start()
    # A second replica on the same data directory: the same embedded self-calibration store.
    second = GatewayProcess(selfcal_policy(upstream_gateway.url), name="selfcal-b",
                            env={"SLM_GATEWAY_DATA_DIR": str(first.workdir / "data")})
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


def ask(client: OpenAI, question: str) -> tuple[str, str]:
    response = client.chat.completions.with_raw_response.create(
        model="cascade", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0)
    return response.headers["x-slm-gateway-route"], response.headers["x-slm-gateway-request-id"]


def record(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    for _ in range(100):
        found = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}", timeout=10)
        if found.status_code == 200:
            data: dict[str, Any] = found.json()
            return data
        time.sleep(0.1)
    raise AssertionError(f"no record for {request_id}")


def cascade_summary(gateway: GatewayProcess, until: Any, timeout: float = 240.0) -> dict[str, Any]:
    """The usage API's summary of the cascade, once ``until(summary)`` holds."""
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{gateway.url}/v1/gateway/usage/cascades", params={"since": "1h"}, timeout=10).json()
        summary = next((c for c in body["cascades"] if c["model"] == "cascade"), {})
        if summary and until(summary):
            return summary
        time.sleep(0.5)
    raise AssertionError(f"the cascade's summary never got there: {summary}")


def client_of(gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="test-key", max_retries=0, timeout=300)


def test_the_cascade_calibrates_itself_and_every_replica_applies_it(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = replicas
    client = client_of(first)
    for question in QUESTIONS:
        route, request_id = ask(client, question)
        assert route == "slm>llm"
        data = record(first, request_id)
        assert data["extra"]["shadow"] == [{"tier": 0, "kind": "pair", "scheduled": True}]
        assert [c["used"] for c in data["calls"]] == [False, True]
    fitted = cascade_summary(first, lambda s: (s["calibration"] or {}).get("version", 0) >= 1)
    state = fitted["calibration"]
    # Both tiers run SmolLM2 greedily: every pair agrees, so the first refit loosens.
    assert state["reason"] == "loosened" and state["labels_used"] == LABELS_TO_FIT
    assert state["threshold"] < 0 and state["disagreement_bound"] <= 0.3 and state["kept_share"] == 1.0
    assert fitted["labels_total"] == LABELS_TO_FIT and fitted["agreement"]["labels"] == 0  # none kept yet

    route, request_id = ask(client, QUESTIONS[0])
    assert route == "slm"  # kept now: the shared threshold decided
    data = record(first, request_id)
    assert data["escalated"] is False and [c["backend"] for c in data["calls"]] == ["slm"]
    assert data["extra"]["selfcal"][0]["version"] == state["version"]
    assert data["extra"]["shadow"] == [{"tier": 0, "kind": "shadow", "scheduled": True}]
    assert data["cost_usd"] == 0.0  # the shadow call to the priced large tier is not the client's
    shadowed = cascade_summary(first, lambda s: s["labels_total"] == LABELS_TO_FIT + 1 and s["shadow_cost_usd"] > 0)
    assert shadowed["agreement"]["labels"] == 1 and shadowed["agreement"]["estimate"] == 1.0
    assert shadowed["shadow_jobs"] == LABELS_TO_FIT + 1

    second.start()  # a replica that never labelled anything reads the shared state
    route, request_id = ask(client_of(second), QUESTIONS[1])
    assert route == "slm"
    assert record(second, request_id)["extra"]["selfcal"][0]["version"] >= state["version"]
