"""The decoding loop of one request: each round, the controller picks a drafter and k (or the
target alone), the drafter proposes, the target verifies in one pass, and the acceptance rule
decides what is committed. Rounds are yielded as they complete, so the client sees each
round's tokens at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace

import numpy as np

from gateway.core.backend import GenerationDone, TokenChunk
from routers.speculative.acceptance import draw, greedy_verdict, rejection_verdict
from routers.speculative.controller import Controller
from routers.speculative.drafters import Drafter
from routers.speculative.generation import Generation, Round
from routers.speculative.verifiers import TargetRows, Verifier


def _pick(rows: TargetRows, generation: Generation, rng: np.random.Generator) -> int:
    if generation.decoding.greedy:
        return rows.argmax[0]
    assert rows.probs is not None
    return draw(rows.probs[0], rng)


async def speculative_rounds(
    generation: Generation, verifier: Verifier, drafters: Sequence[Drafter], controller: Controller,
    rng: np.random.Generator, stop: tuple[str, ...] = (),
) -> AsyncGenerator[Round, None]:
    decoding = generation.decoding
    by_name = {d.name: d for d in drafters}
    costs = controller.costs
    assert costs is not None, "calibrate before decoding"
    while True:
        remaining = generation.remaining
        if remaining <= 0:
            yield Round([], "length")
            return
        sequence = generation.sequence
        options = [(d.name, d.limit(sequence, controller.max_k)) for d in drafters]
        choice = controller.choose(options, remaining, generation.since_speculation)
        after_alone = generation.since_speculation > 0
        if choice.drafter is None and choice.loses and verifier.alone_mode == "text":
            async for step in _hand_off(generation, verifier, stop):
                yield step
            return
        if choice.drafter is None and choice.loses and verifier.alone_mode == "ids":
            # Until the next probe (or to the end): the target's own generation loop, one call.
            until = controller.tokens_until_probe(by_name, generation.since_speculation)
            stretch = remaining if until is None else min(until, remaining)
            before, started = generation.generated, time.perf_counter()
            async for step in _alone_stretch(generation, verifier, stretch, rng):
                yield step
                if step.finish:
                    return
            controller.observe_alone(generation.generated - before, time.perf_counter() - started)
            continue
        if choice.drafter is None:
            started = time.perf_counter()
            rows = await verifier.verify(sequence, [], decoding)
            step = generation.commit([_pick(rows, generation, rng)])
            seconds = time.perf_counter() - started
            generation.account_alone(len(step.tokens), seconds)
            controller.observe_alone(1, seconds)
        else:
            drafter = by_name[choice.drafter]
            proposal = await drafter.propose(sequence, choice.k, decoding, rng)
            drafts = proposal.tokens
            started = time.perf_counter()
            rows = await verifier.verify(sequence, drafts, decoding)
            verify_seconds = time.perf_counter() - started
            if decoding.greedy:
                verdict = greedy_verdict(drafts, rows.argmax)
            else:
                assert rows.probs is not None
                verdict = rejection_verdict(drafts, proposal.probs, rows.probs, rng)
            controller.observe(drafter.name, len(drafts), verdict.accepted)
            if not after_alone:  # the first pass after the target decoded alone also catches up
                controller.observe_round(drafter.name, len(drafts), proposal.step_seconds, verify_seconds)
            steps = costs.c(len(drafts)) + len(drafts) * costs.d(drafter.name)
            generation.account_round(drafter.name, len(drafts), verdict.accepted, proposal.seconds, verify_seconds,
                                     steps, choice.probe)
            generation.stats.target_prompt_tokens += rows.prompt_tokens
            step = generation.commit([*drafts[: verdict.accepted], verdict.next_token])
        yield step
        if step.finish:
            return


async def _alone_stretch(generation: Generation, verifier: Verifier, tokens: int, rng: np.random.Generator
                         ) -> AsyncGenerator[Round, None]:
    """Up to ``tokens`` tokens of the target's own generation, committed as they stream."""
    started = time.perf_counter()
    decoding = generation.decoding
    if not decoding.greedy:  # the target samples with its own generator: seed it from ours
        decoding = replace(decoding, seed=int(rng.integers(1 << 31)))
    committed, ended = 0, False
    last: Round | None = None
    events = verifier.alone(generation.sequence, tokens, decoding, ())
    try:
        async for event in events:
            if isinstance(event, TokenChunk) and event.token_ids:
                step = generation.commit(event.token_ids)
                committed += len(step.tokens)
                if step.finish:
                    last = step
                    break
                if step.tokens:
                    yield step
            elif isinstance(event, GenerationDone) and event.finish_reason != "length" and committed < tokens:
                last, ended = Round([], "stop"), True  # the target ended its answer (EOS) within the stretch
                break
    finally:  # accounted even when the consumer stops early (a stop string, a client gone)
        await events.aclose()
        generation.account_alone(committed, time.perf_counter() - started, passes=committed + int(ended))
    if last is not None:
        yield last


async def _hand_off(generation: Generation, verifier: Verifier, stop: tuple[str, ...]
                    ) -> AsyncGenerator[Round, None]:
    """Speculation would not pay against this remote target: one streamed call for the rest of
    the answer (per-token verify calls would cost a round trip each)."""
    started = time.perf_counter()
    async for event in verifier.alone(generation.sequence, generation.remaining, generation.decoding, stop):
        if isinstance(event, TokenChunk):
            if event.text:
                yield Round([], None, text=event.text)
        elif isinstance(event, GenerationDone):
            tokens = event.completion_tokens
            generation.account_alone(tokens, time.perf_counter() - started, passes=tokens)
            generation.stats.target_prompt_tokens += event.prompt_tokens
            generation.stats.emitted += event.completion_tokens
            yield Round([], "length" if event.finish_reason == "length" else "stop", text="")
            return
