"""Typed access to llama.cpp's C API through llama-cpp-python's ctypes bindings.

The only module that touches ``llama_cpp`` (whose annotations are partial): everything above
it sees plain ints, lists, bytes and numpy arrays. Errors from the C layer become
:class:`LlamaError` here; the backend translates them into ``gateway.core.errors``.
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from gateway.backends.local.llamacpp.hugepages import advise_huge_pages_soon, anonymous_regions

_C: Any = llama_cpp  # the bindings, seen as untyped: this module gives them types

# ggml.h type ids of the KV cache element types offered (q8_0: about half of f16's memory).
KV_TYPES = {"f16": 1, "q8_0": 8}
_FLASH_ATTENTION_ON = 1
_LOAD_MODE_READ = 0  # llama.h LLAMA_LOAD_MODE_NONE: plain reads, no mmap
_DECODE_NO_KV_SLOT = 1
_GGML_LOG_WARN = 3  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_GGML_LOG_CONT = 5

logger = logging.getLogger(__name__)


def _forward_log(level: int, text: bytes, _user_data: Any) -> None:
    # llama.cpp logs every tensor and setting at load to stderr; keep warnings and errors only.
    if _GGML_LOG_WARN <= level < _GGML_LOG_CONT:
        logger.log(logging.WARNING if level == _GGML_LOG_WARN else logging.ERROR, "%s",
                   text.decode("utf-8", errors="replace").rstrip())


# A constant (never replaced): llama.cpp keeps the pointer for the life of the process.
_LOG_CALLBACK = _C.llama_log_callback(_forward_log)


class LlamaError(RuntimeError):
    """llama.cpp refused or failed an operation."""


class KVCacheFullError(LlamaError):
    """``llama_decode`` found no room in the KV cache for the batch."""


@dataclass(frozen=True, slots=True)
class ContextOptions:
    n_ctx: int  # KV cells shared by all sequences (one unified pool)
    n_batch: int  # tokens per llama_decode call
    n_outputs: int  # rows of logits one call may return (the output buffer is n_outputs x vocab floats)
    n_seq_max: int
    n_threads: int
    type_k: str = "f16"  # keys of KV_TYPES
    type_v: str = "f16"


class Model:
    """A loaded GGUF (weights mmapped read-only) and its vocabulary."""

    def __init__(self, path: Path) -> None:
        _C.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        _C.llama_backend_init()
        params = _C.llama_model_default_params()
        params.n_gpu_layers = 0
        # Read the weights into memory rather than mmap them, then back them with huge pages
        # (hugepages.py says why: repacked tensors resident once, fewer TLB misses).
        params.load_mode = _LOAD_MODE_READ
        before = anonymous_regions()
        handle = _C.llama_model_load_from_file(str(path).encode(), params)
        if not handle:
            raise LlamaError(f"llama.cpp could not load {path}")
        advise_huge_pages_soon(anonymous_regions() - before)
        self.handle: Any = handle
        self.vocab: Any = _C.llama_model_get_vocab(handle)
        self.n_vocab: int = int(_C.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train: int = int(_C.llama_model_n_ctx_train(handle))
        self.add_bos: bool = bool(_C.llama_vocab_get_add_bos(self.vocab))
        self.bos_id: int = int(_C.llama_vocab_bos(self.vocab))
        self.eos_id: int = int(_C.llama_vocab_eos(self.vocab))

    def free(self) -> None:
        if self.handle:
            _C.llama_model_free(self.handle)
            self.handle = None

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = int(_C.llama_model_meta_val_str(self.handle, key.encode(), buffer, size))
            if written < 0:
                return None
            if written < size:
                return buffer.value.decode("utf-8", errors="replace")
            size = written + 1

    def is_eog(self, token_id: int) -> bool:
        return bool(_C.llama_vocab_is_eog(self.vocab, token_id))

    def is_control(self, token_id: int) -> bool:
        return bool(_C.llama_vocab_is_control(self.vocab, token_id))

    def piece(self, token_id: int, *, special: bool) -> bytes:
        """The bytes of one token; ``special=False`` renders control tokens as nothing."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = int(_C.llama_token_to_piece(self.vocab, token_id, buffer, size, 0, special))
            if written >= 0:
                return buffer.raw[:written]
            size = -written

    def grammar_tokenizer(self, eos_tokens: Iterable[int]) -> Any:
        """llguidance's tokenizer of this vocabulary: llguidance reads the token bytes and calls
        ``llama_tokenize`` through the same bindings (constrained decoding, gateway/core/structured).
        ``eos_tokens``: every end-of-generation token (a grammar that accepts allows any of them)."""
        import llguidance.llamacpp

        with warnings.catch_warnings():  # it asks every token's attributes by the deprecated name
            warnings.simplefilter("ignore", DeprecationWarning)
            return llguidance.llamacpp.lltokenizer_from_vocab(self.vocab, n_vocab=self.n_vocab,
                                                              eos_token=sorted(eos_tokens))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            tokens = (_C.llama_token * capacity)()
            count = int(_C.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special))
            if count >= 0:
                return [int(t) for t in tokens[:count]]
            capacity = -count


class Context:
    """One llama.cpp context: a unified KV pool holding many sequences, one batch buffer.

    Not thread-safe: the engine's worker thread is its only user.
    """

    def __init__(self, model: Model, options: ContextOptions) -> None:
        params = _C.llama_context_default_params()
        params.n_ctx = options.n_ctx
        params.n_batch = options.n_batch
        params.n_ubatch = options.n_batch
        params.n_seq_max = options.n_seq_max
        params.n_threads = options.n_threads
        params.n_threads_batch = options.n_threads
        params.n_outputs_max = options.n_outputs
        params.n_outputs_max_per_seq = 0  # 0 = n_outputs_max: a sequence may have logits at every row
        params.kv_unified = True  # one pool: a sequence may use the whole context
        params.type_k, params.type_v = KV_TYPES[options.type_k], KV_TYPES[options.type_v]
        if options.type_v != "f16":
            params.flash_attn_type = _FLASH_ATTENTION_ON  # a quantised V cache needs flash attention
        params.no_perf = True
        before = anonymous_regions()
        handle = _C.llama_init_from_model(model.handle, params)
        if not handle:
            raise LlamaError(f"llama.cpp could not create a context of {options.n_ctx} tokens")
        advise_huge_pages_soon(anonymous_regions() - before)  # the KV pool is read at every step too
        self.handle: Any = handle
        self.model = model
        self.n_ctx: int = int(_C.llama_n_ctx(handle))
        self.n_batch = options.n_batch
        self._memory: Any = _C.llama_get_memory(handle)
        self._batch: Any = _C.llama_batch_init(options.n_batch, 0, 1)

    def free(self) -> None:
        if self.handle:
            _C.llama_batch_free(self._batch)
            _C.llama_free(self.handle)
            self.handle = None

    def set_threads(self, threads: int) -> None:
        _C.llama_set_n_threads(self.handle, threads, threads)

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
               outputs: Sequence[bool]) -> None:
        """Run one batch; rows with ``outputs[i]`` get logits (read by batch index with :meth:`logits`)."""
        count = len(tokens)
        if not 0 < count <= self.n_batch:
            raise LlamaError(f"batch of {count} tokens (capacity {self.n_batch})")
        batch = self._batch
        batch.n_tokens = count
        token, pos, n_seq, seq, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        for i in range(count):
            token[i] = tokens[i]
            pos[i] = positions[i]
            n_seq[i] = 1
            seq[i][0] = seq_ids[i]
            logits[i] = outputs[i]
        status = int(_C.llama_decode(self.handle, batch))
        if status == _DECODE_NO_KV_SLOT:
            raise KVCacheFullError("no room in the KV cache for this batch")
        if status != 0:
            raise LlamaError(f"llama_decode failed with status {status}")

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """A copy of the logits computed for row ``index`` of the last batch."""
        pointer = _C.llama_get_logits_ith(self.handle, index)
        if not pointer:
            raise LlamaError(f"no logits for output row {index}")
        row: npt.NDArray[np.float32] = np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,)).copy()
        return row

    def seq_rm(self, seq_id: int, start: int, end: int = -1) -> None:
        """Drop positions ``[start, end)`` of a sequence (``end=-1``: to its end)."""
        if not _C.llama_memory_seq_rm(self._memory, seq_id, start, end):
            raise LlamaError(f"cannot remove positions {start}..{end} of sequence {seq_id}")

    def seq_cp(self, source: int, target: int, start: int, end: int) -> None:
        """Let ``target`` share ``source``'s cells at positions ``[start, end)`` (no copy: one pool)."""
        _C.llama_memory_seq_cp(self._memory, source, target, start, end)

    def seq_pos_max(self, seq_id: int) -> int:
        """The last position a sequence holds, -1 when empty."""
        return int(_C.llama_memory_seq_pos_max(self._memory, seq_id))

    def clear(self) -> None:
        _C.llama_memory_clear(self._memory, False)
