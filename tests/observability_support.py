"""A gateway that served a known mix of requests, for the dashboard, tracing and Grafana tests.

The mix: the in-process SmolLM2 alone (``slm``, twice), the LLM alone (``llm``, the fake
upstream of ``loadtests/fake_upstream.py``), a cascade that keeps the small model's answer
(``kept``), one that escalates to the LLM (``escalated``), and a request to a backend nobody
listens on (``broken``: an error record), SmolLM2 verifying prompt-lookup drafts
(``speculative``); then a virtual key with a budget asks the LLM once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.gateway_process import GatewayProcess, free_port, two_tier_policy

ADMIN_KEY = "sk-admin-observability-test"
QUESTION = [{"role": "user", "content": "Name the largest planet in the solar system."}]
# Prompt lookup drafts from repeated text: the speculative request has something to accept.
REPEAT = [{"role": "user", "content": "Repeat this line twice: the quick brown fox jumps over the lazy dog."}]
MIX = ("slm", "slm", "llm", "kept", "escalated", "speculative", "broken")


def mix_policy(fake_upstream_url: str) -> dict[str, Any]:
    policy = two_tier_policy(fake_upstream_url, upstream_model="fake-model")
    policy["backends"]["slm"]["price"] = {"input_per_1m": 0.05, "output_per_1m": 0.1}
    policy["backends"]["dead"] = {
        "type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "nobody",
        "timeouts": {"connect": 0.5, "first_token": 2.0, "total": 5.0, "idle": 2.0},
        "retry": {"max_attempts": 1},
    }
    slm_tier = {"backend": "slm", "scorer": "mean_logprob"}
    policy["models"].update({
        "kept": {"type": "cascade", "tiers": [{**slm_tier, "threshold": -1e9}, {"backend": "llm"}]},
        "escalated": {"type": "cascade", "tiers": [{**slm_tier, "threshold": 1e9}, {"backend": "llm"}]},
        "broken": {"type": "static", "backend": "dead"},
        # adaptive_k off: k drafts every round, whatever this busy machine's timings say (the
        # adaptive controller may otherwise decide the target alone is faster: nothing drafted).
        "speculative": {"type": "speculative", "target": "slm", "draft": {"ngram": {"max_n": 3, "min_n": 1, "k": 4}},
                        "k": 4, "adaptive_k": False},
    })
    return policy


@dataclass
class ServedMix:
    gateway: GatewayProcess
    request_ids: dict[str, list[str]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    key_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN_KEY}"}

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.gateway.url}{path}", params=params, headers=self.headers, timeout=30)
        answer.raise_for_status()
        return answer.json()


def serve_mix(gateway: GatewayProcess, extra_headers: dict[str, str] | None = None) -> ServedMix:
    served = ServedMix(gateway)
    for model in MIX:
        messages, max_tokens = (REPEAT, 40) if model == "speculative" else (QUESTION, 12)
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=300,
                            headers={**served.headers, **(extra_headers or {})})
        served.request_ids.setdefault(model, []).append(answer.headers["x-slm-gateway-request-id"])
        served.statuses[model] = answer.status_code
    # A virtual key with a budget, spending once (the dashboard's budget bars).
    created = httpx.post(f"{gateway.url}/v1/gateway/keys", headers=served.headers, timeout=30,
                         json={"name": "team-a", "budget_usd": 0.001})
    created.raise_for_status()
    served.key_id = created.json()["id"]
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=300,
                        headers={"authorization": f"Bearer {created.json()['key']}", **(extra_headers or {})},
                        json={"model": "llm", "messages": QUESTION, "max_tokens": 12})
    served.request_ids["team-a"] = [answer.headers["x-slm-gateway-request-id"]]
    served.statuses["team-a"] = answer.status_code
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # records reach the store a few ms after the answer
        rows = served.get("/v1/gateway/dashboard/requests", limit=50)["data"]
        if len(rows) >= len(MIX) + 1:
            return served
        time.sleep(0.1)
    raise AssertionError(f"only {len(rows)} of {len(MIX) + 1} records reached the store")
