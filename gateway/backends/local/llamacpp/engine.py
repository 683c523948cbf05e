"""The llama.cpp engine: one context, many sequences, continuous batching, prefix reuse.

One worker thread owns the context. Every step is one ``llama_decode`` over a batch that
holds one token for every decoding sequence plus up to ``prefill_chunk`` prompt tokens of
requests being admitted, so a long prompt is absorbed over several steps while running
streams keep getting a token per step. Prompts start from the longest prefix a cached
sequence already holds (:mod:`.slots`). Logits are read raw, and sampling, logprobs and
scores are computed from them in numpy (:mod:`gateway.backends.local.sampling`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.backends.local.chat_template import ChatTemplate
from gateway.backends.local.engine import (
    Engine,
    EngineFinished,
    EngineRequest,
    EngineStats,
    GenerateRequest,
    ScoreRequest,
)
from gateway.backends.local.llamacpp.capi import Context, ContextOptions, KVCacheFullError, LlamaError, Model
from gateway.backends.local.llamacpp.jobs import GenerateJob, Job, ScoreJob
from gateway.backends.local.llamacpp.slots import SlotTable
from gateway.core.backend import ChatMessage, Detokenizer
from gateway.core.detokenize import Utf8Detokenizer
from gateway.core.errors import InvalidRequestError, UpstreamError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    kv_tokens: int  # the KV pool shared by all sequences
    max_running: int  # sequences decoded together
    cache_slots: int  # extra sequences kept only as prefix cache
    prefill_chunk: int  # prompt tokens per step
    threads: int
    cache_type_k: str = "f16"
    cache_type_v: str = "q8_0"
    # Prompt rows with logits per step (prompt logprobs, scoring): the output buffer holds
    # (this + max_running) x vocab floats — 14 MB for SmolLM2 rather than 52 MB for a whole chunk.
    output_rows: int = 64


class LlamaCppEngine(Engine):
    """Load with the constructor (blocking), then :meth:`start` the worker thread."""

    def __init__(self, path: Path, options: LlamaCppOptions) -> None:
        self.options = options
        self.stats = EngineStats()
        self.record_steps = False
        self._model = Model(path)
        model = self._model
        # Streamed text leaves control tokens out; logprob entries and echoes show them. The two
        # tables share every ordinary token's bytes object.
        self._pieces = [model.piece(i, special=False) for i in range(model.n_vocab)]
        self._texts = [p or model.piece(i, special=True) for i, p in enumerate(self._pieces)]
        self._eos = frozenset(i for i in range(model.n_vocab) if model.is_eog(i))
        digest = hashlib.sha256()
        for text in self._texts:
            digest.update(len(text).to_bytes(4, "little") + text)
        self._vocabulary_id = digest.hexdigest()
        source = model.meta("tokenizer.chat_template")
        self._template = ChatTemplate(source, self._text(model.bos_id), self._text(model.eos_id)) if source else None
        slots = options.max_running + options.cache_slots
        self._ctx = Context(model, ContextOptions(
            n_ctx=options.kv_tokens, n_batch=options.prefill_chunk + options.max_running,
            n_outputs=options.output_rows + options.max_running, n_seq_max=slots, n_threads=options.threads,
            type_k=options.cache_type_k, type_v=options.cache_type_v,
        ))
        self._threads = options.threads
        self._slots = SlotTable(slots, self._ctx.n_ctx)
        self._pending: queue.SimpleQueue[EngineRequest | None] = queue.SimpleQueue()
        self._waiting: deque[EngineRequest] = deque()
        self._jobs: list[Job] = []
        self._thread: threading.Thread | None = None

    # --- the Engine interface (any thread) ---------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._model.n_vocab

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def vocabulary_id(self) -> str:
        return self._vocabulary_id

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def kv_tokens(self) -> int:
        return self._ctx.n_ctx

    def active(self) -> int:
        return len(self._jobs) + len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="slm-gateway-llamacpp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        self._ctx.free()
        self._model.free()

    def submit(self, request: EngineRequest) -> None:
        self._pending.put(request)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special and self._model.add_bos, parse_special=True)

    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()) -> str:
        if self._template is None:
            raise InvalidRequestError("this model file has no chat template: send a raw prompt to /v1/completions",
                                      param="messages")
        return self._template.render(messages, tools=tools)

    def token_text(self, token_id: int) -> str:
        return self._text(token_id)

    def decode(self, token_ids: Sequence[int]) -> str:
        return b"".join(self._texts[t] for t in token_ids).decode("utf-8", errors="replace")

    def new_detokenizer(self) -> Detokenizer:
        return Utf8Detokenizer(self._pieces)

    def grammar_tokenizer(self) -> Any:
        return self._model.grammar_tokenizer(self._eos)

    def _text(self, token_id: int) -> str:
        return self._texts[token_id].decode("utf-8", errors="replace")

    # --- start-up measurement (before the worker thread runs) ---------------------------

    def time_decode(self, threads: int, steps: int = 6, rows: int = 1) -> float:
        """Seconds per decode step of ``rows`` sequences at ``threads`` (scratch sequences, then
        dropped). Only before :meth:`start`: the worker thread owns the context afterwards."""
        seqs = [slot.seq_id for slot in self._slots.slots[-rows:]]
        self._ctx.set_threads(threads)
        token = self._model.bos_id if self._model.bos_id >= 0 else 0
        try:
            for seq in seqs:
                self._ctx.decode([token] * 8, list(range(8)), [seq] * 8, [False] * 7 + [True])
            started = time.perf_counter()
            for position in range(8, 8 + steps):
                self._ctx.decode([token] * rows, [position] * rows, seqs, [True] * rows)
            return (time.perf_counter() - started) / steps
        finally:
            for seq in seqs:
                self._ctx.seq_rm(seq, 0, -1)
            self._ctx.set_threads(self._threads)

    def set_threads(self, threads: int) -> None:
        self._ctx.set_threads(threads)
        self._threads = threads

    # --- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._admit():
                    break
                if self._jobs:
                    self._step()
            except Exception as exc:  # a bug or a C-layer failure fails the work in hand, not the engine
                logger.exception("llama.cpp engine step failed")
                self._fail_all(str(exc))
        for job in self._jobs:
            job.finish_cancelled()
        for request in self._waiting:
            _finish_unstarted(request, "cancelled")

    def _admit(self) -> bool:
        """Take new requests and place waiting ones in slots. False when asked to shut down."""
        block = not self._jobs and not self._waiting
        while True:
            try:
                item = self._pending.get(block=block)
            except queue.Empty:
                break
            if item is None:
                return False
            self._waiting.append(item)
            block = False
        while self._waiting and len(self._jobs) < self.options.max_running:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                _finish_unstarted(request, "cancelled")
                continue
            if not self._place(request):
                if not self._jobs:  # nothing will free room: it can never fit
                    self._waiting.popleft()
                    _finish_unstarted(request, "error", "the request does not fit in the KV cache")
                    continue
                break  # first come, first served: wait for running requests to finish
            self._waiting.popleft()
        return True

    def _place(self, request: EngineRequest) -> bool:
        scored_top = None
        if isinstance(request, GenerateRequest):
            prompt, limit = request.prompt_ids, len(request.prompt_ids) - 1
            reserve = len(prompt) + request.max_new_tokens
            scored_top = request.prompt_logprobs
        else:
            prompt, limit, reserve = request.token_ids, request.start - 1, len(request.token_ids)
        placement = self._slots.place(prompt, limit, reserve, scored_top)
        if placement is None:
            return False
        for victim in self._slots.evictions_for(placement, reserve):
            self._ctx.seq_rm(victim.seq_id, 0, -1)
            victim.truncate(0)
        slot, keep = placement.slot, placement.keep
        cached = slot.cached_scores(keep, scored_top) if scored_top is not None else []
        if placement.share_from is not None:
            self._ctx.seq_rm(slot.seq_id, 0, -1)
            self._ctx.seq_cp(placement.share_from.seq_id, slot.seq_id, 0, placement.share_len)
            slot.tokens, slot.scores = list(placement.share_from.tokens[: placement.share_len]), []
            keep = placement.share_len
        else:
            self._ctx.seq_rm(slot.seq_id, keep, -1)
            slot.truncate(keep)
        slot.busy, slot.reserved = True, reserve
        self._slots.touch(slot)
        self.stats.reused_tokens += keep
        feed = list(prompt[keep:])
        if isinstance(request, GenerateRequest):
            self._jobs.append(GenerateJob(slot, feed, request, self._eos.__contains__, prompt_scores=cached))
        else:
            self._jobs.append(ScoreJob(slot, feed, request))
        return True

    def _step(self) -> None:
        for job in [j for j in self._jobs if j.cancelled]:
            job.finish_cancelled()
            self._release(job)
        if not self._jobs:
            return
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        outputs: list[bool] = []
        plan: list[tuple[Job, bool, int, int]] = []  # (job, decoding, tokens fed, first batch row)
        for job in self._jobs:
            if isinstance(job, GenerateJob) and job.next_token is not None:
                plan.append((job, True, 1, len(tokens)))
                tokens.append(job.next_token)
                positions.append(len(job.slot.tokens))
                seqs.append(job.slot.seq_id)
                outputs.append(True)
        budget, rows = self.options.prefill_chunk, self.options.output_rows
        for job in self._jobs:
            if budget == 0:
                break
            if not job.prefilling:
                continue
            base = len(job.slot.tokens)
            wanted = [job.wants_logits(base + k) for k in range(min(budget, len(job.feed)))]
            take = len(wanted)
            if sum(wanted) > rows:  # stop the chunk before the row past this step's output budget
                take = [i for i, w in enumerate(wanted) if w][rows]
            if take == 0:
                break
            plan.append((job, False, take, len(tokens)))
            for k in range(take):
                tokens.append(job.feed[k])
                positions.append(base + k)
                seqs.append(job.slot.seq_id)
                outputs.append(wanted[k])
            budget -= take
            rows -= sum(wanted[:take])
        try:
            self._decode(tokens, positions, seqs, outputs)
        except LlamaError as exc:
            logger.error("llama.cpp step failed: %s", exc)
            for job, _, _, _ in plan:
                job.fail(str(exc))
                self._ctx.seq_rm(job.slot.seq_id, len(job.slot.tokens), -1)
                self._release(job)
            return
        finished: list[Job] = []
        for job, decoding, count, row in plan:
            if decoding:
                assert isinstance(job, GenerateJob)
                job.slot.tokens.append(tokens[row])
                job.next_token = None
                if job.take_decode_row(self._ctx.logits(row)):
                    finished.append(job)
                continue
            base = len(job.slot.tokens)
            chunk, job.feed = job.feed[:count], job.feed[count:]
            job.slot.tokens.extend(chunk)
            for k in range(count):
                if outputs[row + k] and job.take_prefill_row(base + k, self._ctx.logits(row + k)):
                    finished.append(job)
        for job in finished:
            self._release(job)

    def _decode(self, tokens: list[int], positions: list[int], seqs: list[int], outputs: list[bool]) -> None:
        try:
            self._ctx.decode(tokens, positions, seqs, outputs)
        except KVCacheFullError:
            # Fragmented pool: drop every idle cached sequence and try once more.
            for slot in self._slots.slots:
                if not slot.busy and slot.tokens:
                    self._ctx.seq_rm(slot.seq_id, 0, -1)
                    slot.truncate(0)
            self._ctx.decode(tokens, positions, seqs, outputs)
        stats = self.stats
        stats.steps += 1
        stats.decoded_tokens += len(tokens)
        stats.max_step_tokens = max(stats.max_step_tokens, len(tokens))
        if self.record_steps:
            stats.history.append(len(tokens))

    def _fail_all(self, message: str) -> None:
        for job in self._jobs:
            job.fail(message)
            job.slot.busy, job.slot.reserved = False, 0
        self._jobs.clear()
        for request in self._waiting:
            _finish_unstarted(request, "error", message)
        self._waiting.clear()
        for slot in self._slots.slots:  # what the KV holds is unknown now: start from empty
            slot.truncate(0)
        self._ctx.clear()

    def _release(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        job.slot.busy, job.slot.reserved = False, 0
        self._slots.touch(job.slot)


def _finish_unstarted(request: EngineRequest, reason: str, error: str | None = None) -> None:
    if isinstance(request, ScoreRequest):
        if reason == "error":
            request.fail(UpstreamError(f"local scoring failed: {error}"))
        return
    request.emit(EngineFinished(reason, len(request.prompt_ids), 0, error))
