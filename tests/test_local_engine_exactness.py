"""The llama.cpp engine against the transformers reference on the same GGUF (docs/engines.md).

Both engines read the same quantised weights; transformers de-quantises them to fp32 and
computes in fp32, llama.cpp multiplies quantised blocks with 8-bit-quantised activations.
So the numbers differ a little, and a greedy choice flips where the reference's two best
tokens are nearly tied. What must hold, and is asserted:

* the same prompt text and token ids (same chat template, same tokenizer);
* prompt logprobs of the same tokens within ``PROMPT_LP_MEAN`` (mean abs) / ``PROMPT_LP_MAX``,
  from the second scored position on;
* generated logprobs within ``GEN_LP_MAX`` while the two agree;
* greedy output identical for 32 tokens on the ``agree`` prompts; on the others, identical or
  diverging only at a near-tie: the reference's top-2 margin below ``TIE`` nats there, and
  llama.cpp's token the reference's runner-up.

Measured with the default KV cache (K f16, V q8_0), SmolLM2-135M Q4_1 (run with ``-s`` to print):
prompt-logprob mean |Δ| 0.06-0.07, max 0.68; generated max 0.23; 5 of the 7 prompts identical for
32 tokens, the other 2 diverge at reference margins of 0.08 and 0.05 nats. Coder-1.5B: docs/engines.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gateway.core.backend import ChatMessage, CompletionPrompt, TokenLogprob
from tests.local_engine_support import chat, coder_gguf, complete, started

PROMPT_LP_MEAN = 0.1
PROMPT_LP_MAX = 1.0
GEN_LP_MAX = 0.3
TIE = 0.3
TOKENS = 32
CONTINUATION = " The answer depends on what you need, so here is a short and careful explanation."

SMOLLM2_AGREE = ["Write a Python function that reverses a string.", "What is a prime number?",
                 "Explain what a hash table is.", "Write a haiku about rain."]
SMOLLM2_NEAR_TIES = ["What is the capital of France?", "List three colours.", "Say hello."]
CODER_AGREE = ["Write a Python function that checks whether a number is prime.",
               "Write a Python function that returns the factorial of n.",
               "Write a Python function that reverses a linked list."]
CODER_NEAR_TIES = ["Explain what a Python list comprehension is, with an example."]


@dataclass
class Run:
    rendered: str
    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[TokenLogprob]
    echo: list[float]
    vocabulary_id: str


async def _runs(engine: str, model: str, prompts: list[str]) -> dict[str, Run]:
    runs = {}
    async with started(engine, model=model, context_length=1024) as backend:
        scorer = backend.token_scorer()
        assert scorer is not None
        for prompt in prompts:
            rendered = await backend.render_chat_prompt([ChatMessage(role="user", content=prompt)])
            assert rendered is not None
            ids = await backend.tokenize(rendered)
            tail = await backend.tokenize(CONTINUATION)
            assert ids is not None and tail is not None
            greedy = await chat(backend, prompt, max_tokens=TOKENS, logprobs=True, top_logprobs=2)
            echo = await complete(backend, CompletionPrompt(token_ids=ids + tail, echo=True, prompt_logprobs=0),
                                  max_tokens=0)
            assert echo.done is not None and echo.done.prompt_logprobs is not None
            scores = [e.logprob for e in echo.done.prompt_logprobs[1:] if e is not None]
            runs[prompt] = Run(rendered, ids + tail, greedy.token_ids, greedy.logprobs, scores, scorer.vocabulary_id)
    return runs


MODELS = [
    pytest.param("smollm2", SMOLLM2_AGREE, SMOLLM2_NEAR_TIES, True, id="smollm2"),
    # Qwen's 271 padding ids render as b"" in llama.cpp and "[PAD…]" in transformers: the hashes differ.
    pytest.param(str(coder_gguf("1.5b")), CODER_AGREE, CODER_NEAR_TIES, False, id="coder-1.5b", marks=[
        pytest.mark.slow,
        pytest.mark.skipif(not coder_gguf("1.5b").exists(),
                           reason="Qwen2.5-Coder-1.5B GGUF not in SLM_GATEWAY_MODELS (~/.cache/slm-gateway/models)"),
    ]),
]


@pytest.mark.parametrize(("model", "agree", "near_ties", "same_vocabulary_id"), MODELS)
async def test_llamacpp_matches_the_transformers_reference(
    model: str, agree: list[str], near_ties: list[str], same_vocabulary_id: bool, model_cache: None
) -> None:
    prompts = agree + near_ties
    fast = await _runs("llamacpp", model, prompts)
    reference = await _runs("transformers", model, prompts)
    for prompt in prompts:
        a, b = fast[prompt], reference[prompt]
        assert (a.vocabulary_id == b.vocabulary_id) == same_vocabulary_id
        assert a.rendered == b.rendered and a.prompt_ids == b.prompt_ids, prompt
        # From the second prompt position on: the distribution after one lone token is degenerate
        # (Qwen after "<|im_start|>": "system" at -24.3 vs -19.1, a far tail; docs/engines.md).
        deltas = np.abs(np.array(a.echo) - np.array(b.echo))[1:]
        assert deltas.mean() <= PROMPT_LP_MEAN and deltas.max() <= PROMPT_LP_MAX, (prompt, deltas.mean(), deltas.max())
        agreed = _common(a.tokens, b.tokens)
        generated = [abs(x.logprob - y.logprob) for x, y in zip(a.logprobs[:agreed], b.logprobs[:agreed], strict=True)]
        print(f"{prompt[:40]:40s} prompt |Δ| mean {deltas.mean():.3f} max {deltas.max():.3f}; "  # for docs (-s)
              f"generated max {max(generated, default=0.0):.3f}; greedy agrees for {agreed} tokens")
        assert max(generated, default=0.0) <= GEN_LP_MAX, (prompt, max(generated))
        if prompt in agree:
            assert agreed == TOKENS and a.tokens == b.tokens, (prompt, agreed)
        elif agreed < min(len(a.tokens), len(b.tokens)):
            top = b.logprobs[agreed].top
            margin = top[0].logprob - top[1].logprob
            assert margin < TIE and top[1].token_id == a.tokens[agreed], (prompt, agreed, margin)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


async def test_smollm2_france_answer_is_the_quantised_model_at_a_near_tie() -> None:
    """SmolLM2 through llama.cpp answers "What is the capital of France?" with "L'Étoile, …" where
    the transformers reference says "The capital of France is Paris." Not the gateway: the prompt
    text and ids equal llama-cpp-python's own template rendering and tokenizer, and the first answer
    token's logprobs equal the library's own decode of the same ids; the Q4_1 model has "The" and
    "L" within 0.1 nats there (reference: -1.88 vs -1.97), and llama.cpp's int8-activation kernels
    put "L" first. Given "The", the rest is the reference's answer (docs/engines.md)."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from gateway.backends.local.sampling import log_softmax
    from gateway.backends.local.source import smollm2_gguf

    question = "What is the capital of France?"
    async with started("llamacpp", context_length=1024, cache_type_v="f16") as backend:
        rendered = await backend.render_chat_prompt([ChatMessage(role="user", content=question)])
        assert rendered is not None
        ids = await backend.tokenize(rendered)
        (the,), (el,) = await backend.tokenize("The"), await backend.tokenize("L")  # type: ignore[misc]
        assert ids is not None
        first = await chat(backend, question, max_tokens=1, logprobs=True, top_logprobs=5)
        ours = {t.token_id: t.logprob for t in first.logprobs[0].top}
        forced = await complete(backend, CompletionPrompt(token_ids=[*ids, the]), max_tokens=12)
    library = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=256, n_threads=1, flash_attn=True,
                              logits_all=True, verbose=False)
    try:
        formatter = Jinja2ChatFormatter(library.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                        bos_token="<|im_start|>")
        assert rendered == formatter(messages=[{"role": "user", "content": question}]).prompt
        assert ids == library.tokenize(rendered.encode(), add_bos=False, special=True)
        library.eval(ids)
        row = log_softmax(np.asarray(library.scores[len(ids) - 1], dtype=np.float32))
    finally:
        library.close()
    assert max(abs(ours[t] - float(row[t])) for t in (the, el)) < 0.02  # the engine adds no numerical error
    assert 0 < ours[el] - ours[the] < TIE  # llama.cpp's choice, by a near-tie
    assert forced.text.startswith(" capital of France is Paris")
