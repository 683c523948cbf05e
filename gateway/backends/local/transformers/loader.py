"""Load a causal LM and its tokenizer with transformers, offline (the reference engine).

transformers de-quantises a GGUF on every load (~30 s here), so the first load writes a
plain HF copy (safetensors + tokenizer) under the cache directory and later loads read
that (a few seconds). The cached copy is also what vLLM serves (it wants an HF directory,
not a GGUF). torch and transformers are imported inside the functions: importing this
module costs nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from gateway.backends.local.source import ModelLoadError, ModelSource, default_cache_dir, resolve_source

logger = logging.getLogger(__name__)


def ensure_hf_directory(source: ModelSource, cache_dir: Path | None = None) -> Path:
    """An HF directory for ``source``: the source itself, or the cached conversion of its GGUF."""
    if source.gguf_file is None:
        return source.directory
    target = (cache_dir or default_cache_dir()) / source.cache_key
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several workers / processes may start at once: one converts, the others wait for it.
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(target):
            _convert_gguf(source, target)
    return target


def _is_complete(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _convert_gguf(source: ModelSource, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    logger.info("converting %s to a cached HF copy at %s (first load only)", source.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(str(source.directory), gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(source.directory), gguf_file=source.gguf_file)
    # The weights are de-quantised to float32 already; drop the GGUF quantizer marker so
    # save_pretrained writes them as ordinary tensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("converted in %.1fs", time.perf_counter() - started)


def set_torch_threads(threads: int) -> None:
    """Process-wide: every transformers model shares torch's intra-op thread pool."""
    import torch

    torch.set_num_threads(threads)


def load_model(
    model: str, gguf_file: str | None = None, *, num_layers: int | None = None, cache_dir: Path | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer), eval mode, on CPU, from a local source only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    directory = ensure_hf_directory(resolve_source(model, gguf_file), cache_dir)
    try:
        if (directory / "tokenizer.json").exists():
            # The generic fast tokenizer reads tokenizer.json + chat template directly; the Auto
            # path resolves a class first and costs ~1.5 s more on every start.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
        if num_layers is not None:
            kwargs["num_hidden_layers"] = num_layers
        lm = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"cannot load model from {directory}: {exc}") from exc
    lm.eval()  # type: ignore[no-untyped-call]
    return lm, tokenizer
