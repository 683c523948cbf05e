"""The measurements of ``loadtests/bench_local.py``, each run in a fresh process (one JSON line out).

* ``decode MODEL``: single-stream decode tokens/s of the llama.cpp engine, the transformers
  engine and llama-cpp-python's high-level ``Llama.generate`` on the same GGUF, interleaved
  round by round (rotating the order), one thread each.
* ``serving``: the llama.cpp engine on SmolLM2 — one stream vs 4 concurrent (aggregate), and
  the TTFT of a 500-token prompt alone vs while 3 streams run, interleaved.
* ``cold MODEL``: first load of a GGUF in a fresh process (imports included).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.backend import ChatMessage, CompletionPrompt, GenerationEvent, SamplingParams, TokenChunk

STORY = "Write a long story about a lighthouse keeper and the ships she saves."
COUNTING = ["1, 2, 3, 4, 5,", "10, 20, 30, 40, 50,", "2, 4, 6, 8, 10,", "100, 101, 102, 103,"]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def _arrivals(events: AsyncIterator[GenerationEvent]) -> list[float]:
    times: list[float] = []
    async for event in events:
        if isinstance(event, TokenChunk):
            times.extend(time.perf_counter() for _ in event.token_ids or (0,))
    return times


def _decode_rate(times: list[float]) -> float:
    """Tokens/s after the first token (decode only: the prompt's prefill is excluded)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def _backend(engine: str, model: str, **settings: Any) -> Any:
    from gateway.backends.local.backend import LocalModelBackend
    from gateway.backends.local.config import LocalBackend

    backend = LocalModelBackend(engine, LocalBackend(type="local", model=model, engine=engine,
                                                     threads=1, **settings))
    await backend.start()
    return backend


async def decode(model: str, tokens: int, rounds: int) -> dict[str, Any]:
    from llama_cpp import Llama, llama_vocab_is_eog

    from gateway.backends.local.source import resolve_source

    load_before = _load()
    path = resolve_source(model).gguf_path
    assert path is not None
    fast = await _backend("llamacpp", model, context_length=2048)
    reference = await _backend("transformers", model, context_length=2048)
    # The library's own loop, with the engine's kernels (flash attention, f16 KV, one thread).
    library = Llama(model_path=str(path), n_ctx=2048, n_batch=256, n_threads=1, n_threads_batch=1,
                    flash_attn=True, verbose=False)
    prompt_ids = await fast.tokenize(await fast.render_chat_prompt([ChatMessage(role="user", content=STORY)]))
    # The engine's own cost: wall time between tokens not spent inside llama_decode (noise-free,
    # unlike the side-by-side rates on a shared box).
    context = fast.engine._ctx  # the benchmark looks inside on purpose
    real_decode, in_decode = context.decode, [0.0]

    def timed_decode(*args: Any) -> None:
        started = time.perf_counter()
        real_decode(*args)
        in_decode[0] += time.perf_counter() - started

    context.decode = timed_decode
    params = SamplingParams(max_tokens=tokens, temperature=0.0)

    overhead: list[float] = []

    async def engine_run(backend: Any) -> list[float]:
        times: list[float] = []
        async for event in backend.stream_completion(CompletionPrompt(token_ids=prompt_ids), params):
            if isinstance(event, TokenChunk):
                times.append(time.perf_counter())
                if len(times) == 1:
                    in_decode[0] = 0.0  # count from the first token: decode steps only
        if backend is fast and len(times) > 1:
            overhead.append(1 - in_decode[0] / (times[-1] - times[0]))
        return times

    async def library_run() -> list[float]:
        library.reset()  # type: ignore[no-untyped-call]  # no cached prompt: the same work as the engines
        times = []
        for token in library.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
            if llama_vocab_is_eog(library._model.vocab, token):  # the library's own stop test
                break
            times.append(time.perf_counter())
            if len(times) >= tokens:
                break
        return times

    contenders: dict[str, Callable[[], Awaitable[list[float]]]] = {
        "llamacpp": lambda: engine_run(fast), "transformers": lambda: engine_run(reference),
        "llama-cpp-python": library_run,
    }
    for run in contenders.values():  # warm-up: first calls pay page faults
        await run()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    counts: dict[str, int] = {}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times = await contenders[name]()
            rates[name].append(_decode_rate(times))
            counts[name] = len(times)
    await fast.close()
    await reference.close()
    return {"model": model, "rates": rates, "median": {k: statistics.median(v) for k, v in rates.items()},
            "tokens": counts, "prompt_tokens": len(prompt_ids), "engine_overhead": statistics.median(overhead),
            "load": [load_before, _load()]}


def _random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(100, 40000) for _ in range(length)]  # fresh tokens: no cached prefix


def step_costs(rounds: int) -> dict[str, float]:
    """The hardware's bound on batching: one decode step of 4 sequences vs of 1 (ms, medians)."""
    from gateway.backends.local.llamacpp.engine import LlamaCppEngine, LlamaCppOptions
    from gateway.backends.local.source import smollm2_gguf

    engine = LlamaCppEngine(smollm2_gguf(), LlamaCppOptions(kv_tokens=8192, max_running=8, cache_slots=8,
                                                           prefill_chunk=256, threads=1))
    try:
        one = [engine.time_decode(1, steps=20, rows=1) for _ in range(rounds)]
        four = [engine.time_decode(1, steps=20, rows=4) for _ in range(rounds)]
    finally:
        engine.stop()
    return {"step1_ms": statistics.median(one) * 1e3, "step4_ms": statistics.median(four) * 1e3}


async def serving(tokens: int, rounds: int) -> dict[str, Any]:
    load_before = _load()
    costs = step_costs(rounds)
    backend = await _backend("llamacpp", "smollm2")  # the default context (8192)
    rng = random.Random(16)

    async def stream(text: str, max_tokens: int = tokens) -> list[float]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        return await _arrivals(backend.stream_completion(CompletionPrompt(text=text), params))

    async def one() -> float:
        started = time.perf_counter()
        times = await stream(COUNTING[0])
        return len(times) / (time.perf_counter() - started)

    async def four() -> float:
        started = time.perf_counter()
        results = await asyncio.gather(*[stream(text) for text in COUNTING])
        return sum(len(t) for t in results) / (time.perf_counter() - started)

    async def ttft(background: int) -> float:
        running = [asyncio.ensure_future(stream(COUNTING[i], 2000)) for i in range(background)]
        while background and backend.engine.active() < background:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # all of them decoding
        prompt = CompletionPrompt(token_ids=_random_prompt(rng, 500))
        started = time.perf_counter()
        async for event in backend.stream_completion(prompt, SamplingParams(max_tokens=1, temperature=0.0)):
            if isinstance(event, TokenChunk):
                break
        first = time.perf_counter() - started
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        return first

    await one()
    figures: dict[str, list[float]] = {"one": [], "four": [], "ttft_alone": [], "ttft_loaded": []}
    for _ in range(rounds):
        figures["one"].append(await one())
        figures["four"].append(await four())
        figures["ttft_alone"].append(await ttft(0))
        figures["ttft_loaded"].append(await ttft(3))
    await backend.close()
    return {"figures": figures, "median": {k: statistics.median(v) for k, v in figures.items()},
            "step_costs": costs, "load": [load_before, _load()]}


async def cold(model: str) -> dict[str, Any]:
    started = time.perf_counter()
    backend = await _backend("llamacpp", model)
    ready = time.perf_counter() - started
    await backend.close()
    return {"model": model, "seconds": ready, "load_seconds": backend.load_seconds, "load": _load()}


def main() -> None:
    phase, *args = sys.argv[1:]
    if phase == "decode":
        result = asyncio.run(decode(args[0], int(args[1]), int(args[2])))
    elif phase == "serving":
        result = asyncio.run(serving(int(args[0]), int(args[1])))
    elif phase == "cold":
        result = asyncio.run(cold(args[0]))
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
