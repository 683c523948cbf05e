"""The loading helpers under their long-standing import path (tools, tests and benchmarks use it).

Source resolution is engine-independent (:mod:`gateway.backends.local.source`); loading with
transformers lives in the reference engine (:mod:`gateway.backends.local.transformers.loader`),
which imports torch only when called.
"""

from __future__ import annotations

from gateway.backends.local.source import (
    SMOLLM2_ALIAS,
    ModelLoadError,
    ModelSource,
    default_cache_dir,
    resolve_source,
    smollm2_gguf,
)
from gateway.backends.local.transformers.loader import ensure_hf_directory, load_model, set_torch_threads

__all__ = [
    "SMOLLM2_ALIAS", "ModelLoadError", "ModelSource", "default_cache_dir", "ensure_hf_directory", "load_model",
    "resolve_source", "set_torch_threads", "smollm2_gguf",
]
