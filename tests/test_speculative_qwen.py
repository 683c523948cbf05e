"""Slow: the Qwen2.5-Coder 0.5B -> 1.5B pair (../shared/models/fetch-qwen-pair), greedy identity."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from routers.speculative.acceptance import DraftLength
from routers.speculative.decoding import Decoding, Speculator, target_greedy
from routers.speculative.forward import CausalLM
from routers.speculative.vocab import same_vocabulary

FETCH = Path("/work/shared/models/fetch-qwen-pair")


@pytest.fixture(scope="module")
def qwen_pair() -> tuple[Any, Any, Any]:
    if not FETCH.exists():
        pytest.skip("fetch-qwen-pair is not available")
    paths = subprocess.run([str(FETCH)], capture_output=True, text=True, check=True, timeout=900).stdout.split()
    from gateway.backends.local.loader import load_model

    small = next(p for p in paths if "0.5b" in p)
    large = next(p for p in paths if "1.5b" in p)
    draft, draft_tokenizer = load_model(small)
    target, tokenizer = load_model(large)
    assert same_vocabulary(draft_tokenizer, tokenizer)
    return target, draft, tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", [False, True])
def test_qwen_pair_greedy_equals_target_alone(qwen_pair: tuple[Any, Any, Any], adaptive: bool) -> None:
    target_model, draft_model, tokenizer = qwen_pair
    eos = {tokenizer.eos_token_id, *([target_model.generation_config.eos_token_id]
                                     if isinstance(target_model.generation_config.eos_token_id, int)
                                     else target_model.generation_config.eos_token_id or [])}
    target, draft = CausalLM(target_model), CausalLM(draft_model)
    for text in ("Write a Python function that checks whether a number is prime.",
                 "Write a JavaScript function that reverses an array."):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        reference = target_greedy(target, ids, 32, eos)
        spec = Speculator(target, draft, ids, eos, Decoding(32), DraftLength(4, 8, adaptive))
        out: list[int] = []
        while True:
            step = spec.step()
            out += step.tokens
            if step.finish:
                break
        assert out == reference, (tokenizer.decode(out), tokenizer.decode(reference))
        assert spec.stats.accepted / spec.stats.drafted > 0.3  # a real draft model, not noise
