"""The transformers engine's worker loop: continuous batching over a left-padded KV cache.

One worker thread owns the model. Requests join the running batch between decode steps
(each is prefilled alone, then merged), and every decode step advances all of them by one
token in a single forward pass. The batch's KV cache is kept *left-padded* so every row
ends at the same column; a step then appends one column for all rows. It is rebuilt only
when a row joins or leaves. Scoring requests run as one full forward pass between steps
(no cache: this engine is the reference, not the fast path).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gateway.backends.local.engine import (
    ConstraintError,
    EngineFinished,
    EngineRequest,
    EngineStats,
    GeneratedToken,
    GenerateRequest,
    PromptScores,
    ScoreRequest,
)
from gateway.backends.local.sampling import prompt_token_scores
from gateway.core.backend import NextTokenScores
from gateway.core.errors import UpstreamError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Row:
    request: GenerateRequest
    last_token: int


@dataclass(slots=True)
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    cache: Any = None  # transformers DynamicCache, batch-major, left-padded
    mask: torch.Tensor | None = None  # (B, L) 1 = real token


class TorchBatcher:
    """Owns the model on one thread; ``submit`` is safe to call from the event loop."""

    def __init__(self, model: Any, eos_token_ids: frozenset[int], max_batch_size: int, stats: EngineStats) -> None:
        self._model = model
        self._eos = eos_token_ids
        self._max_batch = max_batch_size
        self._stats = stats
        self._pending: queue.SimpleQueue[EngineRequest | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._batch = _Batch()

    def active(self) -> int:
        return len(self._batch.rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="slm-gateway-transformers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, request: EngineRequest) -> None:
        self._pending.put(request)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self._stats.steps += 1
        self._stats.decoded_tokens += int(input_ids.numel())
        return self._model(input_ids=input_ids, **kwargs)

    # --- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                if not self._admit(block=not self._batch.rows):
                    break
                if self._batch.rows:
                    try:
                        self._decode_step()
                    except Exception as exc:  # a failed step fails its rows, not the engine
                        logger.exception("decode step failed")
                        for row in self._batch.rows:
                            row.request.emit(EngineFinished("error", len(row.request.prompt_ids),
                                                            row.request.generated, str(exc)))
                        self._batch = _Batch()
        for row in self._batch.rows:
            row.request.emit(EngineFinished("cancelled", len(row.request.prompt_ids), row.request.generated))

    def _admit(self, block: bool) -> bool:
        """Prefill waiting requests into the batch. False when asked to shut down."""
        while len(self._batch.rows) < self._max_batch:
            try:
                request = self._pending.get(block=block)
            except queue.Empty:
                return True
            if request is None:
                return False
            block = False
            if isinstance(request, ScoreRequest):
                self._score(request)
                continue
            if request.cancelled:
                request.emit(EngineFinished("cancelled", len(request.prompt_ids), 0))
                continue
            try:
                self._prefill(request)
            except Exception as exc:
                logger.exception("prefill failed")
                request.emit(EngineFinished("error", len(request.prompt_ids), 0, str(exc)))
        return True

    def _score(self, request: ScoreRequest) -> None:
        if request.cancelled:
            return
        try:
            out = self.forward(torch.tensor([request.token_ids], dtype=torch.long), use_cache=False)
            rows = out.logits[0, request.start - 1 :].float().numpy()
            argmax = tuple(int(i) for i in np.argmax(rows, axis=-1))
            request.resolve(NextTokenScores(argmax=argmax, logits=rows.astype(np.float32) if request.want_logits
                                            else None))
        except Exception as exc:
            logger.exception("scoring failed")
            request.fail(UpstreamError(f"local scoring failed: {exc}"))

    def _prefill(self, request: GenerateRequest) -> None:
        from transformers import DynamicCache

        ids = torch.tensor([request.prompt_ids], dtype=torch.long)
        cache = DynamicCache()
        out = self.forward(ids, cache=cache, use_cache=True)
        logits = out.logits[0].float().numpy()
        if request.prompt_logprobs is not None:
            scores = prompt_token_scores(logits[:-1], request.prompt_ids[1:], request.prompt_logprobs)
            request.emit(PromptScores([None, *scores]))
        if request.max_new_tokens == 0:
            request.emit(EngineFinished("length", len(request.prompt_ids), 0))
            return
        token = self._deliver(request, logits[-1])
        if token is None:
            return
        self._join(_Row(request, token), out.cache, len(request.prompt_ids))

    def _deliver(self, request: GenerateRequest, logits: np.ndarray[Any, Any]) -> int | None:
        """Draw the next token (within the request's constraint) and send it; its id, or None
        when the request is finished."""
        prompt = len(request.prompt_ids)
        if request.grammar_complete:
            request.emit(EngineFinished("stop", prompt, request.generated))
            return None
        try:
            draw = request.draw(logits)
        except ConstraintError as exc:
            request.emit(EngineFinished("constraint", prompt, request.generated, str(exc)))
            return None
        request.generated += 1
        if draw.token_id in self._eos:
            request.emit(EngineFinished("stop", prompt, request.generated - 1))
            return None
        request.emit(GeneratedToken(draw.token_id, draw.logprob, draw.top))
        if request.generated >= request.max_new_tokens:
            request.emit(EngineFinished("length", prompt, request.generated))
            return None
        if request.grammar_complete:  # the document just closed: no forward pass for an EOS
            request.emit(EngineFinished("stop", prompt, request.generated))
            return None
        return draw.token_id

    def _join(self, row: _Row, cache: Any, length: int) -> None:
        from transformers import DynamicCache

        batch = self._batch
        row_mask = torch.ones(1, length, dtype=torch.long)
        if not batch.rows:
            batch.rows, batch.cache, batch.mask = [row], cache, row_mask
            return
        assert batch.mask is not None
        width = max(batch.mask.shape[1], length)
        layers = []
        for old_layer, new_layer in zip(batch.cache.layers, cache.layers, strict=True):
            keys = torch.cat([_left_pad(old_layer.keys, width), _left_pad(new_layer.keys, width)], dim=0)
            values = torch.cat([_left_pad(old_layer.values, width), _left_pad(new_layer.values, width)], dim=0)
            layers.append((keys, values))
        batch.cache = DynamicCache(ddp_cache_data=layers)
        batch.mask = torch.cat([_left_pad_mask(batch.mask, width), _left_pad_mask(row_mask, width)], dim=0)
        batch.rows.append(row)

    def _decode_step(self) -> None:
        batch = self._batch
        self._drop_rows([i for i, row in enumerate(batch.rows) if row.request.cancelled], reason="cancelled")
        if not batch.rows:
            return
        assert batch.mask is not None
        input_ids = torch.tensor([[row.last_token] for row in batch.rows], dtype=torch.long)
        positions = batch.mask.sum(dim=1, keepdim=True)
        mask = torch.cat([batch.mask, torch.ones(len(batch.rows), 1, dtype=torch.long)], dim=1)
        out = self.forward(input_ids, attention_mask=mask, position_ids=positions,
                           cache=batch.cache, use_cache=True)
        batch.cache, batch.mask = out.cache, mask
        logits = out.logits[:, -1].float().numpy()
        finished = []
        for i, row in enumerate(batch.rows):
            token = self._deliver(row.request, logits[i])
            if token is None:
                finished.append(i)
            else:
                row.last_token = token
        self._drop_rows(finished, reason=None)

    def _drop_rows(self, indices: list[int], reason: str | None) -> None:
        if not indices:
            return
        batch = self._batch
        for i in indices:
            if reason is not None:
                request = batch.rows[i].request
                request.emit(EngineFinished(reason, len(request.prompt_ids), request.generated))
        keep = [i for i in range(len(batch.rows)) if i not in set(indices)]
        if not keep:
            self._batch = _Batch()
            return
        assert batch.mask is not None
        index = torch.tensor(keep, dtype=torch.long)
        mask = batch.mask.index_select(0, index)
        # Columns that are padding for every remaining row are dead weight: trim them.
        first_live = int((mask.sum(dim=0) > 0).nonzero()[0])
        for layer in batch.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first_live:]
            layer.values = layer.values.index_select(0, index)[:, :, first_live:]
        batch.mask = mask[:, first_live:]
        batch.rows = [batch.rows[i] for i in keep]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if missing == 0:
        return tensor
    pad = torch.zeros(*tensor.shape[:2], missing, tensor.shape[3], dtype=tensor.dtype)
    return torch.cat([pad, tensor], dim=2)


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([torch.zeros(mask.shape[0], missing, dtype=mask.dtype), mask], dim=1)
