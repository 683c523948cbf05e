"""Monitor-only shadowing of a static route (issue 22, ``shadow:`` on ``type: static``).

The config and the strategy's logic with scripted upstreams (a gated reference proves the client
never waits for it); then end to end: a real gateway process serving SmolLM2 in-process on two
static routes, one shadowed to a second gateway process (SmolLM2 over HTTP), one to a slow fake
upstream, through the real openai client; records, labels and the usage API's report read back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from pydantic import ValidationError

from gateway.accounting.selfcal_report import clopper_pearson
from gateway.auth.estimate import reachable_backends
from gateway.core.backend import Backend, ChatMessage, SamplingParams, TokenChunk
from gateway.core.config import Price
from gateway.core.record import RequestRecord
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext
from loadtests.fake_upstream import FakeConfig, serve_in_thread
from policies.loader import PolicyError, parse_policy
from routers.static.config import StaticStrategy
from routers.static.strategy import Static
from tests.gateway_process import GatewayProcess, two_tier_policy
from tests.selfcal_support import MemoryStore, QuestionBook, ScriptedTier, TaskRunner
from tests.test_selfcal_http import record as gateway_record

SHADOW = {"judge": {"type": "normalized", "extract": "text"}, "sample_rate": 1.0, "max_concurrent": 8,
          "budget_usd_per_day": 1.0}


# --- config ------------------------------------------------------------------------------------


def static(**shadow: Any) -> dict[str, Any]:
    return {"type": "static", "backend": "slm", "shadow": {"backend": "llm", "judge": {"type": "exact"}, **shadow}}


def test_the_shadow_block_rejects_unknown_keys_and_its_own_backend() -> None:
    with pytest.raises(ValidationError, match="threshold"):
        StaticStrategy.model_validate(static(threshold=0.5))  # monitor only: nothing to decide
    with pytest.raises(ValidationError, match="another backend"):
        StaticStrategy.model_validate({**static(), "shadow": {"backend": "slm", "judge": {"type": "exact"}}})
    with pytest.raises(ValidationError, match="sample_rate"):
        StaticStrategy.model_validate(static(sample_rate=0))
    assert StaticStrategy.model_validate({"type": "static", "backend": "slm"}).shadow is None


def test_shadow_and_judge_backends_are_referenced_but_never_billed() -> None:
    data: dict[str, Any] = {"gateway": {"reference_llm": "llm"},
            "backends": {"slm": {"type": "echo"}, "llm": {"type": "echo"}, "grader": {"type": "echo"}},
            "models": {"slm": static(judge={"type": "llm", "backend": "grader"})}}
    policy = parse_policy(data)
    config = policy.models["slm"]
    assert config.referenced_backends() == ["slm", "llm", "grader"]
    assert config.billed_backends() == ["slm"]
    assert reachable_backends(policy, "slm") == ["slm"]  # a key's budget hold never covers the shadow
    del data["backends"]["grader"]
    with pytest.raises(PolicyError, match="unknown backend 'grader'"):
        parse_policy(data)


# --- the strategy, scripted upstreams ------------------------------------------------------------


def scripted_route(sample_rate: float, *, offered: bool = True) -> tuple[Static, ScriptedTier, MemoryStore,
                                                                          TaskRunner, int]:
    """The real Static strategy over a scripted small backend ("B", logprob -0.2) and a gated
    scripted reference ("A"): the reference answers only once the test opens its gate."""
    book = QuestionBook()
    question = book.put(-0.2, agree=False)
    large = ScriptedTier("large", book, small=False)
    large.gate = asyncio.Event()
    backends: dict[str, Backend] = {"small": ScriptedTier("small", book, small=True), "large": large}
    store, runner = MemoryStore(), TaskRunner()
    resources = GatewayResources(backends=backends, prices={"small": Price(), "large": Price(input_per_1m=1.0)},
                                 shadow=runner if offered else None, selfcal_store=store if offered else None)
    runner.resources = resources
    config = StaticStrategy.model_validate({"type": "static", "backend": "small", "shadow": {
        "backend": "large", "judge": {"type": "exact"}, "sample_rate": sample_rate}})
    return Static("route", config, resources), large, store, runner, question


async def ask(strategy: Static, question: int) -> tuple[str, RequestRecord]:
    record = RequestRecord(request_id="client-1", public_model="route", endpoint="chat", stream=True)
    view = ChatRequestView(messages=[ChatMessage(role="user", content=f"q{question}")],
                           params=SamplingParams(max_tokens=4), stream=True)
    events = [event async for event in strategy.chat(view, RequestContext(record, strategy.resources))]
    assert isinstance(events[-1], AnswerDone)
    return "".join(e.text for e in events if isinstance(e, TokenChunk)), record


async def test_a_sampled_answer_is_labelled_after_the_client_has_it() -> None:
    strategy, large, store, runner, question = scripted_route(1.0)
    text, record = await ask(strategy, question)
    assert text == "B" and large.calls == 0  # the whole answer is out; the job has not even started
    for _ in range(20):  # let the job run up to the reference's gate
        await asyncio.sleep(0)
    assert large.calls == 1 and not store.label_lists  # asked, not answered, nothing labelled
    assert record.extra["shadow"] == [{"tier": 0, "kind": "shadow", "scheduled": True}]
    assert [(c.backend, c.used) for c in record.calls] == [("small", True)]
    assert large.gate is not None
    large.gate.set()
    await runner.drain()
    assert not runner.failures
    [label] = store.label_lists[("route", 0)]
    assert (label.tier, label.kept, label.agree) == (0, True, False) and label.score == pytest.approx(-0.2)
    assert (label.small_text, label.large_text, label.request_id, label.judge) == ("B", "A", "client-1", "exact")
    [shadow] = runner.records
    assert [(c.backend, c.used, c.purpose) for c in shadow.calls] == [("large", False, "shadow")]
    assert shadow.extra["selfcal"] == {"tier": 0, "request_id": "client-1", "kept": True, "agree": False,
                                       "judge": "exact", "labels": 1}
    assert runner.estimates[0] > 0  # the reference's price is the admission estimate


async def test_unsampled_and_unoffered_answers_are_not_shadowed() -> None:
    strategy, large, store, runner, question = scripted_route(0.5)
    assert strategy.shadow is not None
    strategy.shadow.random.seed(3)
    large.gate = None
    shadowed = 0
    for _ in range(40):
        _, record = await ask(strategy, question)
        await runner.drain()
        shadowed += len(record.extra.get("shadow", []))
    assert 0 < shadowed < 40  # about half
    assert large.calls == len(store.label_lists[("route", 0)]) == shadowed  # and only those
    strategy, large, _, _, question = scripted_route(1.0, offered=False)
    _, record = await ask(strategy, question)
    assert record.extra["shadow"] == [{"tier": 0, "kind": "shadow", "scheduled": False, "reason": "unavailable"}]
    assert large.calls == 0


# --- end to end ----------------------------------------------------------------------------------

QUESTIONS = ["What is two plus two?", "Name a colour.", "Say hello."]
SLOW_TTFT_S = 10.0  # the slow reference's time to first token


@pytest.fixture(scope="module")
def served(upstream_gateway: GatewayProcess) -> Iterator[GatewayProcess]:
    with serve_in_thread(FakeConfig(ttft_ms=SLOW_TTFT_S * 1000, completion_tokens=4)) as (slow_url, _):
        policy = two_tier_policy(upstream_gateway.url)
        policy["backends"]["llm"]["timeouts"] = {"connect": 5.0, "first_token": 180.0, "total": 300.0, "idle": 180.0}
        policy["backends"]["slow"] = {"type": "openai", "base_url": f"{slow_url}/v1", "model": "fake-model",
                                      "price": {"input_per_1m": 1.0, "output_per_1m": 1.0},
                                      "timeouts": {"connect": 5.0, "first_token": 120.0, "total": 180.0,
                                                   "idle": 120.0}}
        policy["models"]["slm"] = {"type": "static", "backend": "slm", "shadow": {**SHADOW, "backend": "llm"}}
        policy["models"]["slm-slow"] = {"type": "static", "backend": "slm", "shadow": {**SHADOW, "backend": "slow"}}
        process = GatewayProcess(policy, name="static-shadow",
                                 env={"SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1"}).start()
        try:
            yield process
        finally:
            process.stop()


def route_summary(gateway: GatewayProcess, model: str, until: Any, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{gateway.url}/v1/gateway/usage/cascades", params={"since": "1h"}, timeout=10).json()
        summary = next((c for c in body["cascades"] if c["model"] == model), {})
        if summary and until(summary):
            return summary
        time.sleep(0.5)
    raise AssertionError(f"the summary of {model} never got there: {summary}")


def shadow_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """Every shadow job's record, as the usage API returns it (ids from the accounting file)."""
    with sqlite3.connect(gateway.workdir / "data" / "accounting.sqlite3") as db:
        ids = [row[0] for row in db.execute("SELECT request_id FROM records WHERE request_id LIKE 'shadow-%'")]
    return [gateway_record(gateway, request_id) for request_id in ids]


def test_a_static_route_is_labelled_against_its_reference_and_reported(served: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120)
    request_ids = []
    for question in QUESTIONS:
        response = client.chat.completions.with_raw_response.create(
            model="slm", messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0)
        assert response.parse().choices[0].message.content
        request_ids.append(response.headers["x-slm-gateway-request-id"])
    for request_id in request_ids:
        data = gateway_record(served, request_id)
        assert data["extra"]["shadow"] == [{"tier": 0, "kind": "shadow", "scheduled": True}]
        assert [(c["backend"], c["used"]) for c in data["calls"]] == [("slm", True)] and data["cost_usd"] == 0.0

    summary = route_summary(served, "slm", lambda s: s["labels_total"] == len(QUESTIONS)
                            and s["shadow_jobs"] == len(QUESTIONS))
    agreement = summary["agreement"]
    assert agreement["labels"] == len(QUESTIONS) and summary["calibration"] is None  # monitor only
    low, high = clopper_pearson(agreement["agree"], len(QUESTIONS), 0.95)
    assert (agreement["low"], agreement["high"]) == (pytest.approx(low), pytest.approx(high))
    assert agreement["estimate"] == pytest.approx(agreement["agree"] / len(QUESTIONS))
    assert summary["shadow_cost_usd"] > 0 and summary["kept_share"] == 1.0
    assert "agreement with the large model" in summary["sentence"]

    mine = [r for r in shadow_records(served) if r["public_model"] == "slm"]
    assert sorted(r["extra"]["selfcal"]["request_id"] for r in mine) == sorted(request_ids)
    for shadow in mine:
        assert shadow["endpoint"] == "shadow" and shadow["route"] == "shadow"
        assert [(c["backend"], c["used"], c["purpose"]) for c in shadow["calls"]] == [("llm", False, "shadow")]


def test_the_client_never_waits_for_a_slow_reference(served: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120)
    started = time.monotonic()
    stream = client.chat.completions.create(model="slm-slow", messages=[{"role": "user", "content": "Say hi."}],
                                            max_tokens=8, temperature=0, stream=True)
    first_chunk_s: float | None = None
    texts: list[str] = []
    for chunk in stream:
        first_chunk_s = first_chunk_s or time.monotonic() - started
        texts.extend(choice.delta.content or "" for choice in chunk.choices)
    whole_s = time.monotonic() - started
    assert "".join(texts)
    # The reference cannot answer before SLOW_TTFT_S: a client path that awaited it could not be
    # done sooner (a causal bound, not a latency target).
    assert first_chunk_s is not None and whole_s < SLOW_TTFT_S
    labelled_already, checked_s = _has_summary(served), time.monotonic() - started
    if checked_s < SLOW_TTFT_S:
        assert not labelled_already  # the job still waits on the reference, the client is done
    # The label is stored inside the job, its record written after it: wait for both.
    done = route_summary(served, "slm-slow", lambda s: s["labels_total"] == 1 and s["shadow_jobs"] == 1, timeout=120)
    assert time.monotonic() - started >= SLOW_TTFT_S  # the label came only after the reference answered
    assert done["agreement"]["labels"] == 1 and done["shadow_cost_usd"] > 0
    print(f"slm-slow: first chunk {first_chunk_s:.2f} s, whole answer {whole_s:.2f} s, reference TTFT {SLOW_TTFT_S} s")


def _has_summary(gateway: GatewayProcess) -> bool:
    body = httpx.get(f"{gateway.url}/v1/gateway/usage/cascades", params={"since": "1h"}, timeout=10).json()
    return any(c["model"] == "slm-slow" for c in body["cascades"])
