"""Grammar-constrained vs free decoding on the local llama.cpp engine, and schema compile time.

    OMP_NUM_THREADS=1 .venv/bin/python loadtests/bench_structured.py --rounds 9
    OMP_NUM_THREADS=1 .venv/bin/python loadtests/bench_structured.py --model coder-0.5b --rounds 5

One backend (the gateway's own LocalModelBackend, one thread), one request at a time. Per
round, in alternating order, the same prompt is answered free and under a ``json_schema``
response_format; the figure is the decode rate, (tokens - 1) / (last token - first token), so
the prompt's prefill (shared, cached after the first round) is left out. Both answers run to
``--max-tokens`` (40 by default, shorter than either answer) so both pay the same per-step
model cost, which grows with the context: the difference is the constraint's work per token
(mask, masked draw, advance), also timed alone by replaying the constrained answer's tokens.
Compile times: llguidance's tokenizer build (once per model), a schema's first compile (cold:
a schema text not seen before) and a cached one (the LRU's deep copy). Load average is printed
before and after (the box is shared: read the figures with it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.backends.local.backend import LocalModelBackend
from gateway.backends.local.config import LocalBackend
from gateway.backends.local.sampling import draw_token
from gateway.core.backend import ChatMessage, GenerationDone, SamplingParams, TokenChunk
from gateway.core.structured.grammar import grammar_for

MODELS = {"smollm2": "smollm2",
          "coder-0.5b": "~/.cache/slm-gateway/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}
PROMPT = "Describe three European capitals as JSON: for each its name, country, population in millions and a landmark."
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"cities": {"type": "array", "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                                     "population_millions": {"type": "number"}, "landmark": {"type": "string"}},
    "required": ["name", "country", "population_millions", "landmark"], "additionalProperties": False},
    "maxItems": 3}},
    "required": ["cities"], "additionalProperties": False}


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema,
                                                                       "strict": True}}}


async def decode_rate(backend: LocalModelBackend, extra: dict[str, Any], max_tokens: int
                      ) -> tuple[float, list[int]]:
    """(tokens/s after the first token, token ids) of one greedy answer."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, extra=extra)
    arrivals: list[float] = []
    ids: list[int] = []
    async for event in backend.stream_chat([ChatMessage(role="user", content=PROMPT)], params):
        if isinstance(event, TokenChunk):
            ids += event.token_ids
            arrivals.append(time.perf_counter())
        elif isinstance(event, GenerationDone):
            assert event.finish_reason in ("stop", "length")
    if len(arrivals) < 2:
        return float("nan"), ids
    return (len(ids) - 1) / (arrivals[-1] - arrivals[0]), ids


def replay_cost(backend: LocalModelBackend, ids: list[int], repeat: int) -> float:
    """µs per token of the constraint's own work in the engine's loop (mask, masking the logits,
    advance) replayed over a constrained answer's tokens: the model is not run, so this is
    what constraining adds to each step, whatever the load."""
    grammar = grammar_for(response_format(SCHEMA))
    assert grammar is not None
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(backend.engine.vocab_size).astype(np.float32)
    samples = []
    for _ in range(repeat):
        constraint = backend.grammars.constraint(grammar)
        started = time.perf_counter()
        for token in ids:
            draw_token(logits, 0.0, 1.0, False, 0, rng, constraint.allowed())  # the engine's masked draw
            if not constraint.advance(token):
                raise RuntimeError(f"replay rejected token {token}: {constraint.error}")
        samples.append((time.perf_counter() - started) / len(ids) * 1e6)
    return min(samples)  # the least-disturbed replay: other processes only ever add time


def compile_times(backend: LocalModelBackend, repeat: int) -> tuple[float, float, float]:
    """(tokenizer build s, cold compile ms, cached ms): medians over ``repeat`` fresh schemas."""
    grammars = backend.grammars
    started = time.perf_counter()
    grammars.tokenizer()
    tokenizer_s = time.perf_counter() - started  # ~0 when a warm-up request built it already
    cold, cached = [], []
    for i in range(repeat):
        schema = dict(SCHEMA, properties={f"cities_{i}": SCHEMA["properties"]["cities"]}, required=[f"cities_{i}"])
        started = time.perf_counter()
        grammar = grammar_for(response_format(schema))
        assert grammar is not None
        grammars.constraint(grammar)
        cold.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        grammars.constraint(grammar_for(response_format(schema)) or "")
        cached.append((time.perf_counter() - started) * 1000)
    return tokenizer_s, statistics.median(cold), statistics.median(cached)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--compile-repeat", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    config = LocalBackend(type="local", model=os.path.expanduser(MODELS[args.model]), threads=1,
                          engine="llamacpp", context_length=2048)
    backend = LocalModelBackend("bench", config)
    await backend.start()
    try:
        started = time.perf_counter()
        await asyncio.to_thread(backend.grammars.tokenizer)
        tokenizer_s = time.perf_counter() - started
        constrained = response_format(SCHEMA)
        await decode_rate(backend, {}, 8)  # warm-up: the prompt is cached for every run after
        await decode_rate(backend, constrained, 8)
        free_rates: list[float] = []
        json_rates: list[float] = []
        free_tokens: list[int] = []
        json_tokens: list[int] = []
        json_ids: list[int] = []
        for round_ in range(args.rounds):
            order = [("free", {}), ("json", constrained)]
            for name, extra in order if round_ % 2 == 0 else reversed(order):
                rate, ids = await decode_rate(backend, extra, args.max_tokens)
                (free_rates if name == "free" else json_rates).append(rate)
                (free_tokens if name == "free" else json_tokens).append(len(ids))
                json_ids = ids if name == "json" else json_ids
        _, cold_ms, cached_ms = compile_times(backend, args.compile_repeat)
        replay_us = replay_cost(backend, json_ids, args.compile_repeat)
        answer = backend.engine.decode(json_ids)
    finally:
        await backend.close()
    load_after = os.getloadavg()
    free, json_ = statistics.median(free_rates), statistics.median(json_rates)
    print(f"model {args.model} ({backend.model_name}), llama.cpp, 1 thread, {args.rounds} interleaved rounds, "
          f"max_tokens {args.max_tokens}, greedy")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print("| decoding | tokens/s (median) | per round | tokens per answer |")
    print("| --- | ---: | --- | --- |")
    print(f"| free | {free:.1f} | {' '.join(f'{r:.1f}' for r in free_rates)} | {free_tokens} |")
    print(f"| json_schema | {json_:.1f} | {' '.join(f'{r:.1f}' for r in json_rates)} | {json_tokens} |")
    print(f"constrained / free: {json_ / free:.3f} ({(1 / json_ - 1 / free) * 1000:+.2f} ms per token)")
    print(f"constraint work replayed over the {len(json_ids)}-token answer: {replay_us:.1f} µs per token "
          f"(best of {args.compile_repeat})")
    print(f"constrained answer: {answer[:300]}")
    print(f"llguidance tokenizer build: {tokenizer_s:.2f} s (once per model); schema compile cold "
          f"{cold_ms:.2f} ms, cached {cached_ms:.3f} ms (median of {args.compile_repeat})")


if __name__ == "__main__":
    asyncio.run(main())
