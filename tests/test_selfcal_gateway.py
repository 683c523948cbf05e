"""A self-calibrating cascade in a real gateway process: SmolLM2 in-process, the large tier a
second gateway process over HTTP, the real openai client. Every kept request is shadowed
(``sample_rate: 1.0``); the shadow jobs' records, labels, gauges and the usage API's summary are
read back from the running gateway, and a SIGTERM stops it with every shadow record written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.gateway_process import REPO, GatewayProcess, two_tier_policy

QUESTIONS = ["Name a colour.", "What is two plus two?", "Name a fruit.", "Say hello.", "Name an animal."]


def selfcal_policy(upstream_url: str) -> dict[str, Any]:
    policy = two_tier_policy(upstream_url)
    selfcal = {"judge": {"type": "normalized", "extract": "text"}, "sample_rate": 1.0, "apply": False,
               "max_concurrent": 8, "budget_usd_per_day": 1.0}  # never binds here: test_shadow.py tests both
    policy["models"]["cascade"] = {"type": "cascade", "mode": "buffer", "tiers": [
        {"backend": "slm", "scorer": "mean_logprob", "threshold": -1e9, "max_tokens": 16,
         "self_calibration": selfcal},
        {"backend": "llm", "max_tokens": 16}]}
    return policy


@pytest.fixture(scope="module")
def served(upstream_gateway: GatewayProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(selfcal_policy(upstream_gateway.url), name="selfcal",
                             env={"SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1"}).start()
    yield process
    process.stop()


def wait_for(check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError("condition not reached")


def test_kept_requests_are_shadowed_labelled_and_reported(served: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120)
    for question in QUESTIONS:
        answer = client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": question}],
                                                max_tokens=16, temperature=0)
        assert answer.choices[0].message.content  # the client has the small tier's answer

    def summary() -> dict[str, Any] | None:
        body = httpx.get(f"{served.url}/v1/gateway/usage/cascades", params={"since": "1h"}, timeout=10).json()
        cascades = body["cascades"]
        # A label is stored before its shadow record is written: wait for both.
        done = cascades and cascades[0]["labels_total"] >= len(QUESTIONS) \
            and cascades[0]["shadow_jobs"] >= len(QUESTIONS) and cascades[0]["requests"] >= len(QUESTIONS)
        return cascades[0] if done else None

    cascade = wait_for(summary)
    assert cascade["model"] == "cascade" and cascade["requests"] == len(QUESTIONS)
    assert cascade["kept_share"] == 1.0 and cascade["shadow_jobs"] == len(QUESTIONS)
    assert cascade["shadow_cost_usd"] > 0  # the upstream "LLM" is priced
    assert cascade["agreement"]["labels"] == len(QUESTIONS) and cascade["agreement"]["low"] is not None
    assert cascade["sentence"].startswith("kept 100 % of requests local, agreement with the large model")
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert f'slm_gateway_shadow_jobs_started_total{{model="cascade"}} {len(QUESTIONS)}.0' in metrics
    assert 'slm_gateway_selfcal_labels{model="cascade",tier="0"} 5.0' in metrics
    usage = httpx.get(f"{served.url}/v1/gateway/usage", params={"since": "1h", "group_by": "backend"}).json()
    llm = next(g for g in usage["groups"] if g["key"] == "llm")
    assert llm["requests"] == len(QUESTIONS) and llm["cost_usd"] == pytest.approx(cascade["shadow_cost_usd"])


def test_sigterm_leaves_every_shadow_record_written(served: GatewayProcess) -> None:
    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120)
    client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": "Count to ten."}],
                                   max_tokens=16, temperature=0)
    served.stop()  # SIGTERM: drains clients, then shadow jobs, before the accounting sink closes
    data_dir = served.workdir / "data"
    status = subprocess.run([sys.executable, "-m", "gateway.cli", "selfcal", "status", "--json", "--since", "1h",
                             "--data-dir", str(data_dir)], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**served.env})
    [cascade] = json.loads(status.stdout)["cascades"]
    started = len(QUESTIONS) + 1
    assert cascade["requests"] == started and cascade["shadow_jobs"] == started  # one shadow record each
    # The job in flight at SIGTERM had the 5 s drain window: it labelled, or its record says cancelled.
    assert cascade["labels_total"] >= started - 1
    assert cascade["shadow_spend_today_usd"] == pytest.approx(cascade["shadow_cost_usd"])
