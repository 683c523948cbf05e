"""Measure what speculation costs on this machine: c(k) and each drafter's d.

Run once per strategy, on the first request's prompt (a real context length, the engine
warm): one decode step of the target (one new token, one row), a verification of k drafts
(k + 1 new tokens, k + 1 rows) for a few k up to ``max_k`` (the others interpolated), and one
draft step of each model drafter. The calls feed *junk* tokens after the prompt, each
repetition a different one, so the engine computes exactly the new tokens (its prefix reuse
keeps the prompt and rolls the junk back). Each cost is the minimum over repetitions: on a
shared machine the minimum is the least disturbed measurement of the same work.
"""

from __future__ import annotations

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

    async def fastest(self, repeats: int, run: Callable[[int], Awaitable[None]]) -> float:
        best = float("inf")
        for _ in range(repeats):
            self.count += 1
            started = time.perf_counter()
            await run(self.count)
            best = min(best, time.perf_counter() - started)
        return best


async def measure_drafters(drafters: Sequence[ModelDrafter], prompt: Sequence[int], decode_seconds: float,
                           repeats: int) -> dict[str, float]:
    """Each model drafter's time per drafted token, in target decode steps."""
    costs: dict[str, float] = {}
    base = list(prompt)
    calls = _Calls()
    for drafter in drafters:
        scorer = drafter.scorer
        await scorer.score_next_tokens(base, len(base))  # prefill, untimed

        async def step(call: int, scorer: TokenScorer = scorer) -> None:
            await scorer.score_next_tokens([*base, *junk(base, scorer.vocab_size, call, 1)], len(base) + 1)

        costs[drafter.name] = await calls.fastest(repeats, step) / decode_seconds
    return costs


async def calibrate_local(target: TokenScorer, drafters: Sequence[ModelDrafter], prompt: Sequence[int],
                          max_k: int, repeats: int) -> Costs:
    base = list(prompt)
    await target.score_next_tokens(base, len(base))  # prefill, untimed
    vocab = target.vocab_size
    calls = _Calls()

    async def rows(call: int, k: int) -> None:
        await target.score_next_tokens([*base, *junk(base, vocab, call, k + 1)], len(base) + 1)

    # One extra repetition of the decode step warms the engine's paths for one new token.
    decode = await calls.fastest(repeats + 1, partial(rows, k=0))
    verify = {k: await calls.fastest(repeats, partial(rows, k=k)) / decode for k in measured_ks(max_k)}
    return Costs(decode, verify, await measure_drafters(drafters, base, decode, repeats))


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
    gateway sees them: network and the server's own overheads included)."""
    base = list(prompt)
    decode = await remote_decode_seconds(verifier, base, decode_tokens)

    calls = _Calls()

    async def call(number: int, k: int) -> None:
        await verifier.verify(base, junk(base, verifier.vocab_size, number, k), GREEDY, purpose="probe")
        verifier.ctx.last_call().used = False

    verify = {k: await calls.fastest(repeats, partial(call, k=k)) / decode for k in measured_ks(max_k)}
    return Costs(decode, verify, await measure_drafters(drafters, base, decode, repeats))
