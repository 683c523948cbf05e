"""The cascade strategy end to end: the real SmolLM2 in-process, a real HTTP upstream as the LLM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from routers.learned.classifiers import LogRegModel
from routers.learned.router import LearnedRouter, RouterMeta
from tests.gateway_process import GatewayProcess, two_tier_policy

QUESTION = [{"role": "user", "content": "Name the largest planet in the solar system."}]


def cascade_policy(upstream_url: str, **cascade: Any) -> dict[str, Any]:
    policy = two_tier_policy(upstream_url)
    # The shared 2-core machine can take longer than the default 30 s to a first upstream token;
    # a 504 there would test the machine, not the cascade.
    policy["backends"]["llm"]["timeouts"] = {"connect": 5.0, "first_token": 180.0, "total": 300.0, "idle": 180.0}
    tiers = cascade.pop("tiers", None) or [
        {"backend": "slm", "scorer": "mean_logprob", "threshold": cascade.pop("threshold", -1.0)},
        {"backend": "llm"},
    ]
    policy["models"]["cascade"] = {"type": "cascade", "tiers": tiers, **cascade}
    return policy


def constant_router(directory: Path, score: float) -> str:
    """A real learned-router directory whose classifier ignores the text: P(strong) = score."""
    bias = float(np.log(score / (1 - score)))
    model = LogRegModel(np.zeros(384, dtype=np.float32), bias, 1.0)
    LearnedRouter(model, RouterMeta("logreg", model.params(), 0.5, "test")).save(directory)
    return str(directory)


@pytest.fixture(scope="module")
def cascades(upstream_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    router_dir = constant_router(tmp_path_factory.mktemp("router"), 0.5)
    policy = cascade_policy(upstream_gateway.url)
    models = policy["models"]
    base = models.pop("cascade")
    slm_tier = base["tiers"][0]
    models["never"] = {**base, "tiers": [{**slm_tier, "threshold": -1e9}, {"backend": "llm"}]}
    models["always"] = {**base, "tiers": [{**slm_tier, "threshold": 1e9}, {"backend": "llm"}]}
    models["early"] = {**base, "tiers": [
        {**slm_tier, "threshold": -1e9, "early_exit": {"window": 3, "floor": -1e-6}}, {"backend": "llm"}]}
    # Router first stage: P(strong) = 0.5 is below ``low`` (easy: the small model answers even
    # at a threshold that always escalates) or at/above ``high`` (hard: straight to the LLM).
    models["routed_easy"] = {**models["always"], "router": {"router_dir": router_dir, "low": 0.6, "high": 0.9}}
    models["routed_hard"] = {**models["never"], "router": {"router_dir": router_dir, "low": 0.1, "high": 0.4}}
    process = GatewayProcess(policy, name="cascade").start()
    yield process
    process.stop()


def chat(gateway: GatewayProcess, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0, **extra}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=300)


def record(gateway: GatewayProcess, response: httpx.Response) -> dict[str, Any]:
    request_id = response.headers["x-slm-gateway-request-id"]
    for _ in range(50):
        found = httpx.get(f"{gateway.url}/v1/gateway/requests/{request_id}")
        if found.status_code == 200:
            data: dict[str, Any] = found.json()
            return data
    raise AssertionError(f"no record for {request_id}")


def test_threshold_never_escalates(cascades: GatewayProcess) -> None:
    response = chat(cascades, "never")
    assert response.status_code == 200
    assert response.headers["x-slm-gateway-route"] == "slm"
    assert float(response.headers["x-slm-gateway-confidence"]) < 0
    assert response.json()["model"] == "SmolLM2-135M-Instruct"
    data = record(cascades, response)
    assert data["escalated"] is False and data["route"] == "slm"
    assert [c["used"] for c in data["calls"]] == [True]


def test_threshold_always_escalates_and_discards_the_attempt(cascades: GatewayProcess) -> None:
    response = chat(cascades, "always")
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-gateway-route"] == "slm>llm"
    assert response.json()["model"] == "upstream-smollm2"
    data = record(cascades, response)
    assert data["escalated"] is True
    assert [(c["backend"], c["used"]) for c in data["calls"]] == [("slm", False), ("llm", True)]
    assert data["calls"][0]["completion_tokens"] > 0
    # The discarded attempt is priced (free here) and the answer's cost is the LLM call's.
    assert data["cost_usd"] == pytest.approx(data["calls"][1]["cost_usd"])
    assert data["cost_usd"] > 0


def test_early_exit_stops_the_doomed_attempt(cascades: GatewayProcess) -> None:
    response = chat(cascades, "early", max_tokens=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-gateway-route"] == "slm>llm"
    data = record(cascades, response)
    assert data["extra"]["early_exit"][0]["at_token"] <= 3
    assert data["calls"][0]["completion_tokens"] <= 3


@pytest.mark.parametrize(("model", "route", "escalated"),
                         [("routed_easy", "slm", False), ("routed_hard", "llm", True)])
def test_router_first_stage_routes_obvious_cases_directly(
    cascades: GatewayProcess, model: str, route: str, escalated: bool
) -> None:
    response = chat(cascades, model)
    assert response.status_code == 200
    assert response.headers["x-slm-gateway-route"] == route
    assert float(response.headers["x-slm-gateway-router-score"]) == pytest.approx(0.5, abs=1e-4)
    data = record(cascades, response)
    assert data["escalated"] is escalated
    assert [c["backend"] for c in data["calls"]] == [route]  # no small-model attempt to discard
    assert data["extra"]["router_decision"] == ("first_tier" if route == "slm" else "last_tier")


def test_streamed_buffer_cascade_is_well_formed(cascades: GatewayProcess) -> None:
    body = {"model": "always", "messages": QUESTION, "max_tokens": 16, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{cascades.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.headers["x-slm-gateway-route"] == "slm>llm"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1])
    assert text == chat(cascades, "llm", max_tokens=16).json()["choices"][0]["message"]["content"]


def handoff_floor(gateway: GatewayProcess) -> tuple[float, int]:
    """A token floor that the small model's greedy answer crosses mid-answer (not at token 1)."""
    answer = chat(gateway, "slm", logprobs=True).json()
    logprobs = [t["logprob"] for t in answer["choices"][0]["logprobs"]["content"]]
    for k in range(2, len(logprobs)):
        if logprobs[k] < min(logprobs[:k]) - 1e-3:
            return (logprobs[k] + min(logprobs[:k])) / 2, k
    raise AssertionError(f"no mid-answer dip in {logprobs}")


def test_handoff_streams_one_answer_prefix_plus_continuation(
    cascades: GatewayProcess, upstream_gateway: GatewayProcess
) -> None:
    floor, dip_at = handoff_floor(cascades)
    policy = cascade_policy(upstream_gateway.url, mode="handoff", tiers=[
        {"backend": "slm", "threshold": -1e9, "early_exit": {"window": 1, "floor": floor}}, {"backend": "llm"}])
    process = GatewayProcess(policy, name="handoff").start()
    try:
        body = {"model": "cascade", "messages": QUESTION, "max_tokens": 24, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{process.url}/v1/chat/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            request_id = response.headers["x-slm-gateway-request-id"]
            lines = [line for line in response.iter_lines() if line]
        data = httpx.get(f"{process.url}/v1/gateway/requests/{request_id}").json()
    finally:
        process.stop()
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert data["route"] == "slm>llm" and data["escalated"] is True
    handoff = data["extra"]["handoffs"][0]
    assert handoff["at_token"] == dip_at + 1
    assert 0 < handoff["prefix_chars"] < len(text)
    assert [c["backend"] for c in data["calls"]] == ["slm", "llm"]
    # Both tiers run SmolLM2 greedily, so prefix + continuation equals the small model alone.
    alone = chat(cascades, "slm")
    assert text == alone.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_handoff_falls_back_to_buffer_without_prefix_continuation(upstream_gateway: GatewayProcess) -> None:
    policy = cascade_policy(upstream_gateway.url, mode="handoff", tiers=[
        {"backend": "slm", "threshold": 1e9, "early_exit": {"window": 4, "floor": -3}}, {"backend": "llm"}])
    policy["backends"]["llm"]["supports_prefix_continuation"] = False
    process = GatewayProcess(policy, name="cascade-fallback").start()
    try:
        response = chat(process, "cascade")
        assert response.headers["x-slm-gateway-route"] == "slm>llm"
        data = record(process, response)
        assert data["extra"]["handoff_fallback"].startswith("buffer: backend 'llm' cannot continue")
    finally:
        process.stop()
