"""Each model's answers to a labelled set, generated once and kept in a JSON file (``--cache``).

Greedy answers are deterministic, so every analysis (calibration, held-out evaluation, the
threshold sweep, the combined-policy table) can reuse them instead of generating again: on this
CPU the 1.5B model needs minutes per dozen HumanEval problems. A cached answer is keyed by the
backend's name and model, the task, the messages, the token cap and the stop sequences, so a
changed prompt or model is generated afresh. The file holds text, token logprobs (with top
alternatives), timings and token counts, and each humaneval verdict under the key of the program
and sandbox that produced it: a reload reuses the verdict while both are the same and grades again
when either changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from gateway.core.backend import Backend, GenerationDone, SamplingParams, TokenChunk, TokenLogprob, TopLogprob
from routers.cascade.offline.labelled import LabelledItem

T = TypeVar("T")


async def gather_bounded(
    jobs: Sequence[Callable[[], Awaitable[T]]], concurrency: int, description: str
) -> list[T]:
    """Run jobs with at most ``concurrency`` in flight (the local engine batches them), in order."""
    semaphore = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(jobs), desc=description, unit="q")

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            result = await job()
            progress.update()
            return result

    try:
        return await asyncio.gather(*(run(job) for job in jobs))
    finally:
        progress.close()


@dataclass(frozen=True, slots=True)
class BackendAnswer:
    text: str
    logprobs: list[TokenLogprob]
    correct: bool
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    structure: str | None = None  # humaneval: why the code is malformed (None: parses, defines it)
    examples: str | None = None  # humaneval: why well-formed code fails the prompt's own examples

    def fails(self, structural: str | None) -> str | None:
        """Why a tier with this ``structural`` check escalates the answer whatever its score."""
        if structural is None:
            return None
        return self.structure or (self.examples if structural == "python_examples" else None)


def answer_params(item: LabelledItem) -> SamplingParams:
    # ``client_stream``: the harness reads every answer as a stream (it times the first token), so
    # the backend's idle and first-token limits guard it, not ``timeouts.total`` — on a loaded box
    # one of 8 answers decoded together took more than code.yaml's 1800 s and failed a whole run.
    return SamplingParams(max_tokens=item.max_tokens, temperature=0.0, stop=item.stop, logprobs=True,
                          top_logprobs=5, client_stream=True, extra=item.extra)


async def ask_backend(backend: Backend, item: LabelledItem, params: SamplingParams | None = None) -> BackendAnswer:
    params = params or answer_params(item)
    started = time.perf_counter()
    first: float | None = None
    text = ""
    logprobs: list[TokenLogprob] = []
    usage = (0, 0)
    async for event in backend.stream_chat(item.messages, params):
        if isinstance(event, TokenChunk):
            first = first or time.perf_counter()
            text += event.text
            logprobs.extend(event.logprobs)
        elif isinstance(event, GenerationDone):
            usage = (event.prompt_tokens, event.completion_tokens)
            break
    latency = time.perf_counter() - started
    ttft = first - started if first else None
    correct = await asyncio.to_thread(item.is_correct, text)  # humaneval runs a subprocess
    examples = await asyncio.to_thread(item.examples, text)
    return BackendAnswer(text, logprobs, correct, latency, ttft, *usage, structure=item.structure(text),
                         examples=examples)


def _encode(answer: BackendAnswer, item: LabelledItem) -> dict[str, Any]:
    tokens = [[t.token, t.logprob, [[c.token, c.logprob] for c in t.top]] for t in answer.logprobs]
    row = {"text": answer.text, "tokens": tokens, "latency_s": answer.latency_s, "ttft_s": answer.ttft_s,
           "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens}
    key = item.grade_key(answer.text)
    if key is not None:
        row["graded"] = [key, answer.correct]
    examples_key = item.examples_key(answer.text)
    if examples_key is not None:
        row["examples"] = [examples_key, answer.examples]
    return row


def _verdict(row: dict[str, Any], item: LabelledItem) -> bool:
    """The answer's grade: kept with the row under the key of what was run (program and sandbox),
    so a reload does not start a process per answer; graded again when either changed."""
    key = item.grade_key(row["text"])
    graded = row.get("graded")
    if key is not None and isinstance(graded, list) and graded[0] == key:
        return bool(graded[1])
    correct = item.is_correct(row["text"])
    if key is not None:
        row["graded"] = [key, correct]
    return correct


def _examples(row: dict[str, Any], item: LabelledItem) -> str | None:
    """The answer's examples check, cached with the row like its grade."""
    key = item.examples_key(row["text"])
    cached = row.get("examples")
    if key is not None and isinstance(cached, list) and cached[0] == key:
        return cached[1] if isinstance(cached[1], str) else None
    reason = item.examples(row["text"])
    if key is not None:
        row["examples"] = [key, reason]
    return reason


def _decode(row: dict[str, Any], item: LabelledItem) -> BackendAnswer:
    logprobs = [TokenLogprob(token, lp, top=tuple(TopLogprob(c, v) for c, v in top))
                for token, lp, top in row["tokens"]]
    return BackendAnswer(row["text"], logprobs, _verdict(row, item), row["latency_s"], row["ttft_s"],
                         row["prompt_tokens"], row["completion_tokens"], item.structure(row["text"]),
                         _examples(row, item))


@dataclass
class AnswerCache:
    """Answers by key in one JSON file; ``path`` None keeps nothing."""

    path: Path | None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | None) -> AnswerCache:
        if path is not None and path.exists():
            return cls(path, json.loads(path.read_text()).get("answers", {}))
        return cls(path)

    @staticmethod
    def key(name: str, model_name: str, item: LabelledItem) -> str:
        messages = json.dumps([[m.role, m.content] for m in item.messages])
        # A stop sequence changes where an answer ends: part of the key (absent when there is none,
        # so answers cached before stops existed stay valid).
        stop = f"|{json.dumps(list(item.stop))}" if item.stop else ""
        digest = hashlib.sha256(f"{item.task}|{item.max_tokens}{stop}|{messages}".encode()).hexdigest()[:16]
        return f"{name}|{model_name}|{item.id}|{digest}"

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"version": 1, "answers": self.rows}))
            tmp.replace(self.path)


async def answers_for(name: str, backend: Backend, items: Sequence[LabelledItem], concurrency: int,
                      cache: AnswerCache, description: str) -> list[BackendAnswer]:
    """``backend``'s answer to every item: from the cache, else generated (and cached)."""
    keys = [AnswerCache.key(name, backend.model_name, item) for item in items]
    missing = [i for i, key in enumerate(keys) if key not in cache.rows]

    async def generate(index: int) -> None:
        cache.rows[keys[index]] = _encode(await ask_backend(backend, items[index]), items[index])
        if len(cache.rows) % 10 == 0:
            cache.save()  # a long run interrupted keeps what it has

    if missing:
        try:
            await gather_bounded([partial(generate, i) for i in missing], concurrency, description)
        finally:
            cache.save()  # also when interrupted (Ctrl-C, a deadline): keep every answer finished
    verdicts = [cache.rows[k].get("graded") for k in keys]
    answers = list(await asyncio.gather(*(asyncio.to_thread(_decode, cache.rows[k], it)
                                          for k, it in zip(keys, items, strict=True))))
    if verdicts != [cache.rows[k].get("graded") for k in keys]:
        cache.save()  # graded afresh: keep the verdicts for the next run
    return answers
