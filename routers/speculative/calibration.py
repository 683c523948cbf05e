"""Measure what speculation costs on this machine: c(k) and each drafter's d.

Run once per strategy, on the first request's prompt (a real context length, the engine
warm): one decode step of the target (one new token, one row), a verification of k drafts
(k + 1 new tokens, k + 1 rows) for a few k up to ``max_k`` (the others interpolated), and one
draft step of each model drafter. The calls feed *junk* tokens after the prompt, each
repetition a different one, so the engine computes exactly the new tokens (its prefix reuse
keeps the prompt and rolls the junk back). Each ratio is taken against decode steps timed
right before and after it (median over repetitions). The controller then refines the costs
from every round it runs (:meth:`~routers.speculative.controller.Controller.observe_round`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from gateway.core.backend import GenerationDone, TokenChunk, TokenScorer
from routers.speculative.controller import Costs
from routers.speculative.drafters import ModelDrafter
from routers.speculative.generation import Decoding
from routers.speculative.verifiers import RemoteVerifier

GREEDY = Decoding(max_new_tokens=1)


def measured_ks(max_k: int) -> list[int]:
    """1, 2, 4, 8, ... up to max_k, and max_k itself: c(k) is close to linear in between."""
    ks, k = [], 1
    while k < max_k:
        ks.append(k)
        k *= 2
    return [*ks, max_k]


def junk(prompt: Sequence[int], vocab_size: int, call: int, length: int) -> list[int]:
    """``length`` tokens after ``prompt``; consecutive calls differ in the first one, so each call
    computes all of its tokens (none is left in the cache by the call before)."""
    first = (prompt[-1] + 1 + call) % vocab_size
    return [(first + 7 * i) % vocab_size for i in range(length)]


class _Calls:
    """Numbers the timed calls of one calibration (each gets fresh junk)."""

    def __init__(self) -> None:
        self.count = 0

    async def timed(self, run: Callable[[int], Awaitable[None]]) -> float:
        self.count += 1
        started = time.perf_counter()
        await run(self.count)
        return time.perf_counter() - started

    async def ratio(self, repeats: int, decode: Callable[[int], Awaitable[None]],
                    measured: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
        """Median over repetitions of ``measured`` / the mean of a decode step timed just before
        and just after it, and those decode times. Adjacent pairs: on a shared machine the load
        drifts within seconds, and a ratio of two distant measurements would carry that drift."""
        ratios, decodes = [], []
        for _ in range(repeats):
            before = await self.timed(decode)
            value = await self.timed(measured)
            after = await self.timed(decode)
            ratios.append(value / ((before + after) / 2))
            decodes += [before, after]
        return statistics.median(ratios), decodes


async def calibrate_local(target: TokenScorer, drafters: Sequence[ModelDrafter], prompt: Sequence[int],
                          max_k: int, repeats: int) -> Costs:
    base = list(prompt)
    vocab = target.vocab_size
    calls = _Calls()
    await target.score_next_tokens(base, len(base))  # prefill, untimed

    async def rows(call: int, k: int) -> None:
        await target.score_next_tokens([*base, *junk(base, vocab, call, k + 1)], len(base) + 1)

    decode = partial(rows, k=0)
    await calls.timed(decode)  # warms the engine's path for one new token
    verify: dict[int, float] = {}
    decodes: list[float] = []
    for k in measured_ks(max_k):
        verify[k], timed = await calls.ratio(repeats, decode, partial(rows, k=k))
        decodes += timed
    draft: dict[str, float] = {}
    for drafter in drafters:
        scorer = drafter.scorer
        await scorer.score_next_tokens(base, len(base))  # prefill, untimed

        async def step(call: int, scorer: TokenScorer = scorer) -> None:
            await scorer.score_next_tokens([*base, *junk(base, scorer.vocab_size, call, 1)], len(base) + 1)

        draft[drafter.name], timed = await calls.ratio(repeats, decode, step)
        decodes += timed
    return Costs(statistics.median(decodes), verify, draft)


async def remote_decode_seconds(verifier: RemoteVerifier, prompt: Sequence[int], tokens: int) -> float:
    """Seconds per token of the target streaming alone (first token excluded: that is prefill)."""
    first: float | None = None
    done: GenerationDone | None = None
    decoding = Decoding(max_new_tokens=tokens)
    async for event in verifier.alone(prompt, tokens, decoding, ()):
        if isinstance(event, TokenChunk) and first is None:
            first = time.perf_counter()
        elif isinstance(event, GenerationDone):
            done = event
    ended = time.perf_counter()
    verifier.ctx.last_call().used = False
    if first is None or done is None or done.completion_tokens < 2:
        raise ValueError("the remote target streamed too few tokens to time a decode step")
    return (ended - first) / (done.completion_tokens - 1)


async def calibrate_remote(verifier: RemoteVerifier, drafters: Sequence[ModelDrafter], prompt: Sequence[int],
                          max_k: int, repeats: int, decode_tokens: int = 8) -> Costs:
    """c(k) of a remote target: one verification call over one streamed decode step (both as the
    gateway sees them: network and the server's own overheads included). The decode step is
    timed before and after the verification calls, and their mean is the reference."""
    base = list(prompt)
    before = await remote_decode_seconds(verifier, base, decode_tokens)
    calls = _Calls()

    async def call(number: int, k: int) -> None:
        await verifier.verify(base, junk(base, verifier.vocab_size, number, k), GREEDY, purpose="probe")
        verifier.ctx.last_call().used = False

    seconds = {k: min([await calls.timed(partial(call, k=k)) for _ in range(repeats)]) for k in measured_ks(max_k)}
    decode = (before + await remote_decode_seconds(verifier, base, decode_tokens)) / 2
    draft: dict[str, float] = {}
    for drafter in drafters:
        scorer = drafter.scorer
        await scorer.score_next_tokens(base, len(base))  # prefill, untimed

        async def step(number: int, scorer: TokenScorer = scorer) -> None:
            await scorer.score_next_tokens([*base, *junk(base, scorer.vocab_size, number, 1)], len(base) + 1)

        draft[drafter.name] = min([await calls.timed(step) for _ in range(repeats)]) / decode
    return Costs(decode, {k: v / decode for k, v in seconds.items()}, draft)
