"""Slow: the Qwen2.5-Coder 0.5B -> 1.5B pair on llama.cpp, greedy identity on HumanEval prompts.

The GGUF files are read from ``SLM_GATEWAY_MODELS`` (default ``~/.cache/slm-gateway/models``),
where ``../shared/models/fetch-qwen-pair`` (next to the repository) puts them; HumanEval
prompts from ``../shared/data/humaneval/dev.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.backends.local.backend import LocalModelBackend
from gateway.core.backend import CompletionPrompt, SamplingParams, TokenChunk
from gateway.core.record import RequestRecord
from gateway.core.strategy import GatewayResources, RequestContext
from loadtests.speculative_models import agreement
from policies.loader import PolicyError
from routers.speculative.config import SpeculativeStrategy
from routers.speculative.strategy import Speculative
from tests.gateway_process import REPO
from tests.local_engine_support import coder_gguf, collect, started

pytestmark = pytest.mark.slow

SHARED = REPO.parent / "shared"
HUMANEVAL = SHARED / "data" / "humaneval" / "dev.jsonl"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (fetch it with {SHARED / 'models' / 'fetch-qwen-pair'})")
    return path


@pytest.fixture(scope="module")
async def pair() -> AsyncIterator[tuple[LocalModelBackend, LocalModelBackend]]:
    async with started("llamacpp", str(require(coder_gguf("1.5b"))), context_length=4096) as large, \
            started("llamacpp", str(require(coder_gguf("0.5b"))), context_length=4096) as small:
        yield large, small


def humaneval_prompts(count: int) -> list[str]:
    lines = require(HUMANEVAL).read_text().splitlines()[:count]
    return [str(json.loads(line)["prompt"]) for line in lines]


def speculative(pair: tuple[LocalModelBackend, LocalModelBackend], **config: object) -> Speculative:
    large, small = pair
    spec = SpeculativeStrategy.model_validate({"type": "speculative", "target": "large", **config})
    return Speculative("spec", spec, GatewayResources(backends={"large": large, "small": small}, prices={}))


@pytest.mark.parametrize("adaptive", [False, True])
async def test_coder_pair_greedy_equals_the_target_alone(pair: tuple[LocalModelBackend, LocalModelBackend],
                                                        adaptive: bool) -> None:
    large, _ = pair
    spec = speculative(pair, draft=[{"backend": "small"}, {"ngram": {}}] if adaptive else {"backend": "small"},
                       k=4, adaptive_k=adaptive)
    await spec.start()
    params = SamplingParams(max_tokens=48, temperature=0.0)
    for prompt in humaneval_prompts(2):
        ids = await large.token_scorer().tokenize(prompt)  # type: ignore[union-attr]
        reference = (await collect(large.stream_completion(CompletionPrompt(token_ids=ids), params))).token_ids
        record = RequestRecord("r", "spec", "/v1/completions", stream=False)
        out = [t async for e in spec.completion(CompletionPrompt(token_ids=ids), params,
                                                RequestContext(record, spec.resources))
               if isinstance(e, TokenChunk) for t in e.token_ids]
        # Identical, or parted at a float tie: the target alone itself flips such ties with the
        # KV pool's layout (docs/speculative.md, "Float ties").
        same = await agreement(large.token_scorer(), ids, out, reference)  # type: ignore[arg-type]
        assert same.identical or same.tie, same
        stats = record.extra["speculative"]
        if not adaptive:
            assert stats["acceptance_rate"] > 0.3  # a real draft model, not noise
            assert stats["target_passes_per_token"] < 0.7


async def test_a_draft_with_another_vocabulary_is_refused(pair: tuple[LocalModelBackend, LocalModelBackend]
                                                          ) -> None:
    large, _ = pair
    async with started("llamacpp", "smollm2") as smollm2:
        config = SpeculativeStrategy.model_validate({"type": "speculative", "target": "large",
                                                     "draft": {"backend": "smol"}})
        spec = Speculative("spec", config, GatewayResources(backends={"large": large, "smol": smollm2}, prices={}))
        with pytest.raises(PolicyError, match="do not share a vocabulary"):
            await spec.start()
