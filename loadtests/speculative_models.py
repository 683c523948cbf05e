"""Pieces of loadtests/bench_speculative.py: the tie-aware greedy comparison, a modelled
memory-bound target around a real TokenScorer, and the target behind a second gateway."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.backend import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    CompletionPrompt,
    Detokenizer,
    GenerationDone,
    GenerationEvent,
    NextTokenScores,
    SamplingParams,
    TokenScorer,
)

REPO = Path(__file__).resolve().parent.parent
TIE_LOGIT = 0.15  # logit gap under which two greedy choices are a float tie (batch shapes, KV layout)


@dataclass(frozen=True, slots=True)
class Agreement:
    identical: bool
    position: int | None = None
    gap: float | None = None

    @property
    def tie(self) -> bool:
        return not self.identical and self.gap is not None and self.gap < TIE_LOGIT

    def cell(self) -> str:
        if self.identical:
            return "yes"
        return f"{'tie' if self.tie else 'NO'}@{self.position} (gap {self.gap:.3f})"


async def agreement(scorer: TokenScorer, prompt: Sequence[int], out: Sequence[int], ref: Sequence[int]) -> Agreement:
    """Equal token lists, or where they part and by how much the target's logits differ there."""
    if list(out) == list(ref):
        return Agreement(True)
    i = next((j for j, (a, b) in enumerate(zip(out, ref, strict=False)) if a != b), min(len(out), len(ref)))
    if i >= len(out) or i >= len(ref):
        return Agreement(False, i, float("inf"))  # one stopped where the other went on
    context = [*prompt, *ref[:i]]
    row = (await scorer.score_next_tokens(context, len(context), want_logits=True)).logits[-1]
    return Agreement(False, i, abs(float(row[out[i]]) - float(row[ref[i]])))


async def remote_agreement(target: Backend, scorer: TokenScorer, prompt: Sequence[int], out_text: str,
                           ref_text: str) -> Agreement:
    """A remote target's answers are text (a hand-off streams no ids): where the texts part,
    both are tokenised (the draft's tokenizer: the same vocabulary) and the target itself is asked
    (prompt logprobs, top 5) how far apart its scores of the two tokens are after the common prefix."""
    if out_text == ref_text:
        return Agreement(True)
    out, ref = await scorer.tokenize(out_text), await scorer.tokenize(ref_text)
    i = next((j for j, (a, b) in enumerate(zip(out, ref, strict=False)) if a != b), min(len(out), len(ref)))
    if i >= len(out) or i >= len(ref):
        return Agreement(False, i, float("inf"))  # one stopped where the other went on
    done = None
    async for event in target.stream_completion(CompletionPrompt(token_ids=[*prompt, *ref[: i + 1]],
                                                                 prompt_logprobs=5),
                                                SamplingParams(max_tokens=1, temperature=0.0)):
        done = event
    entry = done.prompt_logprobs[-1] if isinstance(done, GenerationDone) and done.prompt_logprobs else None
    scores = {t.token_id: t.logprob for t in entry.top} if entry is not None else {}
    if entry is not None and entry.token_id is not None:
        scores[entry.token_id] = entry.logprob
    # Outside the top 5: no tie (the gap is at least the 1st-to-5th distance; reported as inf).
    gap = abs(scores[out[i]] - scores[ref[i]]) if out[i] in scores and ref[i] in scores else float("inf")
    return Agreement(False, i, gap)  # logprobs of one row differ by exactly their logits' difference


class ModelledScorer(TokenScorer):
    """A real scorer whose calls last as long as a memory-bound model's would: rows decoded in
    one pass cost ``step * (1 + slope * (rows - 1))``; the call sleeps for what the real work
    did not take (a call slower than its model — the prompt's prefill — keeps its real time)."""

    def __init__(self, inner: TokenScorer, step: float, slope: float) -> None:
        self.inner, self.step, self.slope = inner, step, slope
        self.overruns = 0

    @property
    def vocabulary_id(self) -> str:
        return self.inner.vocabulary_id

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.inner.eos_token_ids

    async def tokenize(self, text: str) -> list[int]:
        return await self.inner.tokenize(text)

    def new_detokenizer(self) -> Detokenizer:
        return self.inner.new_detokenizer()

    async def score_next_tokens(self, token_ids: Sequence[int], start: int, *,
                                want_logits: bool = False) -> NextTokenScores:
        started = time.perf_counter()
        scores = await self.inner.score_next_tokens(token_ids, start, want_logits=want_logits)
        modelled = self.step * (1 + self.slope * (len(token_ids) - start))
        rest = modelled - (time.perf_counter() - started)
        if rest > 0:
            await asyncio.sleep(rest)
        else:
            self.overruns += 1
        return scores


class ModelledBackend(Backend):
    """Only what speculation needs of a backend: its (modelled) scorer."""

    def __init__(self, name: str, scorer: TokenScorer) -> None:
        super().__init__(name)
        self.scorer = scorer

    @property
    def model_name(self) -> str:
        return f"modelled-{self.name}"

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(local=True, token_scoring=True)

    def token_scorer(self) -> TokenScorer | None:
        return self.scorer

    async def stream_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                          ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def stream_completion(self, prompt: CompletionPrompt, params: SamplingParams
                                ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError
        yield  # pragma: no cover


async def remote_target(model: Path, threads: int) -> tuple[Any, Backend]:
    """The target behind a second gateway process (``slm-gateway serve``), as an openai backend."""
    import tempfile

    import yaml

    from gateway.backends.openai.backend import OpenAICompatibleBackend
    from gateway.backends.openai.config import OpenAIBackend
    from gateway.core.config import Timeouts
    from loadtests.processes import ServerProcess, free_port

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    policy = {"version": 1, "backends": {"large": {"type": "local", "model": str(model), "threads": threads,
                                                   "context_length": 4096}},
              "models": {"large": {"type": "static", "backend": "large"}}}
    (workdir / "policy.yaml").write_text(yaml.safe_dump(policy))
    server = ServerProcess("target", [sys.executable, "-m", "gateway.cli", "serve", "--policy",
                                      str(workdir / "policy.yaml"), "--host", "127.0.0.1", "--port", str(port)],
                           base_url=f"http://127.0.0.1:{port}", ready_path="/ready", log_path=workdir / "server.log",
                           env={"SLM_GATEWAY_DATA_DIR": str(workdir / "data"), "OMP_NUM_THREADS": "1"}, cwd=REPO)
    server.start(timeout=240)
    backend = OpenAICompatibleBackend("target", OpenAIBackend(
        type="openai", base_url=f"{server.base_url}/v1", model="large", supports_prefix_continuation=True,
        timeouts=Timeouts(connect=5, first_token=120, total=600, idle=120)))
    await backend.start()
    return server, backend
