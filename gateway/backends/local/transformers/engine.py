"""The transformers engine: the model in fp32 torch weights (the numerical reference).

Kept for Hugging Face model directories and to check the llama.cpp engine against
(docs/engines.md). torch and transformers are imported only by this sub-package, which is
imported only when a policy selects ``engine: transformers``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jinja2 import TemplateError

from gateway.backends.local.config import LocalBackend
from gateway.backends.local.engine import Engine, EngineRequest, EngineStats
from gateway.backends.local.source import ModelSource
from gateway.backends.local.threads import choose_threads
from gateway.backends.local.tool_prompt import TemplateToolSupport, probe_tool_support, template_conversation
from gateway.backends.local.transformers.batching import TorchBatcher
from gateway.backends.local.transformers.loader import load_model
from gateway.core.backend import ChatMessage, Detokenizer
from gateway.core.detokenize import IncrementalDetokenizer
from gateway.core.errors import InvalidRequestError


def load_transformers(name: str, config: LocalBackend, source: ModelSource) -> TransformersEngine:
    model, tokenizer = load_model(str(source.directory), source.gguf_file, num_layers=config.num_layers)
    engine = TransformersEngine(model, tokenizer, config.max_batch_size)
    # torch's intra-op pool is process-wide: every transformers model shares one setting.
    torch.set_num_threads(choose_threads(name, config.threads, engine.time_decode))
    return engine


class TransformersEngine(Engine):
    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stats = EngineStats()
        self._eos = frozenset(_eos_ids(model, tokenizer))
        self._vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._vocabulary_id = _vocabulary_hash(tokenizer)
        self._batcher = TorchBatcher(model, self._eos, max_batch_size, self.stats)
        # Probed on first use: a tokenizer without a chat template fails only the requests needing one.
        self._tool_support: TemplateToolSupport | None = None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def vocabulary_id(self) -> str:
        return self._vocabulary_id

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def active(self) -> int:
        return self._batcher.active()

    def start(self) -> None:
        self._batcher.start()

    def stop(self) -> None:
        self._batcher.stop()

    def submit(self, request: EngineRequest) -> None:
        self._batcher.submit(request)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special)
        return ids

    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()) -> str:
        if self._tool_support is None:
            self._tool_support = probe_tool_support(self._apply_template)
        dicts, tools_argument = template_conversation(messages, tools, self._tool_support)
        return self._apply_template(dicts, tools_argument)

    def _apply_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        try:
            text: str = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                           add_generation_prompt=True)
        except (TemplateError, ValueError) as exc:  # ValueError: the tokenizer has no chat template
            raise InvalidRequestError(f"the model's chat template failed: {exc}", param="messages") from exc
        return text

    def token_text(self, token_id: int) -> str:
        text: str = self.tokenizer.decode([token_id])
        return text

    def decode(self, token_ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(token_ids))
        return text

    def new_detokenizer(self) -> Detokenizer:
        return IncrementalDetokenizer(self.tokenizer)

    def grammar_tokenizer(self) -> Any:
        import llguidance.hf

        return llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self._vocab_size, eos_token=sorted(self._eos))

    def time_decode(self, threads: int, steps: int = 4) -> float:
        """Seconds per single-token decode step at ``threads`` (run before the worker starts)."""
        from transformers import DynamicCache

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                cache = DynamicCache()
                self.model(input_ids=torch.zeros(1, 8, dtype=torch.long), cache=cache, use_cache=True)
                started = time.perf_counter()
                for _ in range(steps):
                    self.model(input_ids=torch.zeros(1, 1, dtype=torch.long), cache=cache, use_cache=True)
                return (time.perf_counter() - started) / steps
        finally:
            torch.set_num_threads(before)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for candidate in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list):
            ids.update(candidate)
    return ids


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (printable stand-ins for the 256 bytes), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def _vocabulary_hash(tokenizer: Any) -> str:
    """sha256 over each token's bytes in id order — the same bytes llama.cpp renders for a
    byte-level BPE vocabulary, so one GGUF hashes alike on both engines."""
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    digest = hashlib.sha256()
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        text = token or ""
        if token_id not in special and all(c in decoder for c in text):
            data = bytes(decoder[c] for c in text)
        else:
            data = text.encode("utf-8")
        digest.update(len(data).to_bytes(4, "little") + data)
    return digest.hexdigest()
