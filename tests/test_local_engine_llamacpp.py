"""What only the llama.cpp engine does: prefix reuse, chunked prefill, the shared KV pool,
no torch in the process, and its errors (real SmolLM2 GGUF; Qwen2.5-Coder pair when present)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.local.chat_template import ChatTemplate, ChatTemplateError
from gateway.backends.local.config import LocalBackend
from gateway.backends.local.source import ModelLoadError
from gateway.core.backend import ChatMessage, CompletionPrompt, SamplingParams, TokenChunk
from tests.local_engine_support import chat, coder_gguf, collect, complete, started


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[LocalModelBackend]:
    async with started("llamacpp", context_length=4096, prefill_chunk=256) as backend:
        yield backend


async def test_a_repeated_prompt_decodes_only_its_last_token(backend: LocalModelBackend) -> None:
    stats = backend.engine.stats
    first = await chat(backend, "Name a colour.", max_tokens=6)
    before_decoded, before_reused = stats.decoded_tokens, stats.reused_tokens
    again = await chat(backend, "Name a colour.", max_tokens=6)
    assert again.token_ids == first.token_ids  # reused KV gives the same answer
    assert first.done is not None
    prompt = first.done.prompt_tokens
    assert stats.reused_tokens - before_reused == prompt - 1  # one token re-fed for its logits
    assert stats.decoded_tokens - before_decoded == 1 + 5  # that token, then 5 decode steps


async def test_a_hand_off_continues_from_the_cached_answer(backend: LocalModelBackend) -> None:
    """A cascade's hand-off: the prompt plus the answer so far, sent back as a raw completion."""
    stats = backend.engine.stats
    messages = [ChatMessage(role="user", content="Write one sentence about the sea.")]
    answer = await chat(backend, "Write one sentence about the sea.", max_tokens=12)
    rendered = await backend.render_chat_prompt(messages)
    assert rendered is not None
    prompt_ids = await backend.tokenize(rendered)
    assert prompt_ids is not None
    before = stats.decoded_tokens
    continued = await complete(backend, CompletionPrompt(token_ids=prompt_ids + answer.token_ids), max_tokens=4)
    # The KV held the prompt and 11 of the 12 answer tokens (the last was sampled, never fed).
    assert stats.decoded_tokens - before == 1 + 3
    alone = await complete(backend, CompletionPrompt(token_ids=prompt_ids), max_tokens=16)
    assert alone.token_ids[:16] == (answer.token_ids + continued.token_ids)[:16]


async def test_a_shared_system_prompt_is_computed_once(backend: LocalModelBackend) -> None:
    stats = backend.engine.stats
    system = ChatMessage(role="system", content="You are a terse assistant. " * 20)
    for question in ("Name a fruit.", "Name a tree.", "Name a bird."):
        before = stats.reused_tokens
        await collect(backend.stream_chat([system, ChatMessage(role="user", content=question)],
                                          SamplingParams(max_tokens=3, temperature=0.0)))
        reused = stats.reused_tokens - before
    rendered = await backend.render_chat_prompt([system])
    assert rendered is not None
    system_tokens = len(await backend.tokenize(rendered) or [])
    assert reused >= system_tokens - 8  # the last question reused the whole system turn


async def test_scoring_a_growing_sequence_decodes_only_the_new_tokens(backend: LocalModelBackend) -> None:
    scorer = backend.token_scorer()
    assert scorer is not None
    ids = await scorer.tokenize("def fibonacci(n):\n    if n < 2:\n        return n\n")
    stats = backend.engine.stats
    await scorer.score_next_tokens(ids[:10], 10)
    before = stats.decoded_tokens
    await scorer.score_next_tokens(ids[:15], 11)  # rows 11..15 need positions 10..14
    assert stats.decoded_tokens - before == 5
    before = stats.decoded_tokens
    diverged = [*ids[:12], 0, 0]  # rolled back to the common prefix, then the rest fed
    scores = await scorer.score_next_tokens(diverged, 14)
    assert stats.decoded_tokens - before == 2
    fresh = await scorer.score_next_tokens([*diverged, 1], 14)  # the cache does not change answers
    assert fresh.argmax[0] == scores.argmax[0]


async def test_prompt_logprobs_of_a_growing_prompt_reuse_the_cached_scores(backend: LocalModelBackend) -> None:
    """A remote verifier's calls: the committed ids plus a few drafts, prompt logprobs each time.
    Only the tokens past the cached prefix are computed (one re-fed for its row); the reused
    scores are the earlier call's, cut to the requested top-K."""
    scorer = backend.token_scorer()
    assert scorer is not None
    ids = await scorer.tokenize("def fibonacci(n):\n    if n < 2:\n        return n\n"
                                "    return fibonacci(n - 1) + fibonacci(n - 2)\n")
    assert len(ids) > 24
    stats = backend.engine.stats

    async def echo(prompt: list[int], top: int) -> list[tuple[int, float, list[int]]]:
        result = await complete(backend, CompletionPrompt(token_ids=prompt, prompt_logprobs=top), max_tokens=1)
        assert result.done is not None and result.done.prompt_logprobs is not None
        return [(e.token_id or 0, e.logprob, [t.token_id or 0 for t in e.top])
                for e in result.done.prompt_logprobs[1:] if e is not None]

    first = await echo(ids[:20], 3)
    before = stats.decoded_tokens
    grown = await echo(ids, 2)
    assert stats.decoded_tokens - before == len(ids) - 20 + 1  # token 19 re-fed for its row, then the rest
    assert grown[:19] == [(t, lp, top[:2]) for t, lp, top in first]
    before = stats.decoded_tokens
    wider = await echo(ids, 5)  # more alternatives than were cached: computed from the start
    assert stats.decoded_tokens - before == len(ids)
    assert [t for t, _, _ in wider] == [t for t, _, _ in grown]
    assert max(abs(a[1] - b[1]) for a, b in zip(wider, grown, strict=True)) < 0.1  # batch-shape rounding only


async def test_many_logit_rows_are_spread_over_steps(backend: LocalModelBackend) -> None:
    """At most 64 prompt rows of logits per step: a 300-token echo and a 200-row scoring call
    still get every row, over several steps."""
    ids = [(11 + 7 * i) % 30000 + 100 for i in range(300)]
    steps = backend.engine.stats.steps
    echo = await complete(backend, CompletionPrompt(token_ids=ids, echo=True, prompt_logprobs=0), max_tokens=0)
    assert echo.done is not None and echo.done.prompt_logprobs is not None
    assert len(echo.done.prompt_logprobs) == 300 and all(e is not None for e in echo.done.prompt_logprobs[1:])
    assert backend.engine.stats.steps - steps >= 5  # 299 rows at <= 64 per step
    scorer = backend.token_scorer()
    assert scorer is not None
    scores = await scorer.score_next_tokens(ids[:200], 1, want_logits=True)
    assert scores.logits.shape == (200, scorer.vocab_size)
    assert list(scores.argmax) == [int(row.argmax()) for row in scores.logits]
    # The chosen token's logprob from the scorer's raw rows matches the echo's (same positions).
    from gateway.backends.local.sampling import log_softmax

    for position in (1, 63, 64, 65, 150):
        entry = echo.done.prompt_logprobs[position]
        assert entry is not None
        expected = float(log_softmax(scores.logits[position - 1])[ids[position]])
        assert abs(entry.logprob - expected) < 0.05


async def test_a_long_prompt_does_not_freeze_a_running_stream(backend: LocalModelBackend) -> None:
    order: list[str] = []
    long_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Greedy SmolLM2 keeps counting for all 120 tokens (no early end of sequence).
    stream = backend.stream_completion(CompletionPrompt(text="1, 2, 3, 4, 5,"),
                                       SamplingParams(max_tokens=120, temperature=0.0))

    async def running() -> None:
        async for event in stream:
            if isinstance(event, TokenChunk):
                order.append("stream")
                if order.count("stream") == 5:
                    long_task.set_result(None)
        if not long_task.done():
            long_task.set_exception(AssertionError(f"the stream ended after {order.count('stream')} tokens"))

    async def long_prompt() -> None:
        await long_task
        order.append("long admitted")
        ids = [(17 + 13 * i) % 40000 + 100 for i in range(1500)]  # 1500 tokens: 6 chunks of 256
        async for event in backend.stream_completion(CompletionPrompt(token_ids=ids),
                                                     SamplingParams(max_tokens=2, temperature=0.0)):
            if isinstance(event, TokenChunk):
                order.append("long token")

    await asyncio.gather(running(), long_prompt())
    admitted, first_long = order.index("long admitted"), order.index("long token")
    during = order[admitted:first_long].count("stream")
    assert during >= 5  # the stream kept its one token per step while 1500 prompt tokens went in
    assert backend.engine.stats.max_step_tokens <= 256 + backend.config.max_batch_size


async def test_requests_wait_for_room_in_a_small_kv_pool() -> None:
    async with started("llamacpp", context_length=256, prefix_cache_slots=0) as small:
        prompts = ["Name a colour.", "Name a fruit.", "Name a city."]
        alone = [await chat(small, p, max_tokens=180) for p in prompts]
        together = await asyncio.gather(*[chat(small, p, max_tokens=180) for p in prompts])
        # Each reserves ~215 of 256 cells: they ran one after another, not failed.
        assert [r.token_ids for r in together] == [r.token_ids for r in alone]
        assert all(r.done is not None and r.done.finish_reason in ("stop", "length") for r in together)


async def test_a_failed_step_is_an_upstream_error_and_the_engine_goes_on(
    backend: LocalModelBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.backends.local.llamacpp.capi import LlamaError
    from gateway.core.errors import UpstreamError

    context = backend.engine._ctx  # type: ignore[attr-defined]
    real = context.decode
    calls = {"n": 0}

    def failing_once(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise LlamaError("llama_decode failed with status -3")
        real(*args)

    monkeypatch.setattr(context, "decode", failing_once)
    with pytest.raises(UpstreamError, match="status -3"):
        await chat(backend, "Name a colour.", max_tokens=8)
    after = await chat(backend, "Name a colour.", max_tokens=8)  # rolled back: same answer as ever
    monkeypatch.setattr(context, "decode", real)
    assert after.token_ids == (await chat(backend, "Name a colour.", max_tokens=8)).token_ids
    assert after.done is not None and after.done.completion_tokens == len(after.token_ids)


def test_num_layers_is_refused_for_llamacpp() -> None:
    with pytest.raises(ValidationError, match="num_layers is a transformers-engine setting"):
        LocalBackend(type="local", model="smollm2", num_layers=8)
    with pytest.raises(ValidationError, match="num_layers is a transformers-engine setting"):
        LocalBackend(type="local", model="/models/x.gguf", engine="llamacpp", num_layers=8)
    assert LocalBackend(type="local", model="smollm2", engine="transformers", num_layers=8).num_layers == 8


async def test_a_broken_gguf_is_a_load_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match=r"llama\.cpp"):
        async with started("llamacpp", model=str(broken)):
            pass


def test_a_template_that_refuses_is_an_invalid_request() -> None:
    template = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
                            "{{ bos_token }}{{ messages[0]['content'] }}", "<s>", "</s>")
    assert template.render([ChatMessage(role="user", content="hi")]) == "<s>hi"
    with pytest.raises(ChatTemplateError, match="user first"):
        template.render([ChatMessage(role="assistant", content="hi")])


def test_torch_is_never_imported_when_serving_a_gguf(tmp_path: Path) -> None:
    script = """
import asyncio, json, sys
from pathlib import Path
import httpx
from gateway.app import build_app
from gateway.settings import GatewaySettings
from tests.inprocess import NoMetrics, RecordingSink
app = build_app(GatewaySettings(policy_path=Path(sys.argv[1]), data_dir=Path(sys.argv[2]), threads=1),
                accounting=RecordingSink(), metrics=NoMetrics())
async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            body = {"model": "slm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            reply = await client.post("/v1/chat/completions", json=body)
            return reply.status_code
status = asyncio.run(main())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"status": status, "heavy": heavy}))
"""
    import yaml

    from tests.gateway_process import smollm2_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(smollm2_policy()))
    out = subprocess.run([sys.executable, "-c", script, str(policy), str(tmp_path / "data")], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "heavy": []}


@pytest.mark.skipif(not coder_gguf("0.5b").exists() or not coder_gguf("1.5b").exists(),
                    reason="Qwen2.5-Coder 0.5B/1.5B GGUFs not in SLM_GATEWAY_MODELS (~/.cache/slm-gateway/models)")
async def test_vocabulary_id_matches_the_coder_pair_only() -> None:
    ids = {}
    for name, model in (("0.5b", str(coder_gguf("0.5b"))), ("1.5b", str(coder_gguf("1.5b"))), ("smollm2", "smollm2")):
        async with started("llamacpp", model=model, context_length=256) as loaded:
            scorer = loaded.token_scorer()
            assert scorer is not None
            ids[name] = (scorer.vocabulary_id, scorer.vocab_size)
    assert ids["0.5b"] == ids["1.5b"]
    assert ids["smollm2"][0] != ids["0.5b"][0]
