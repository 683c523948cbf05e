"""Kept importable here for existing callers; the implementations live in :mod:`gateway.core.detokenize`."""

from __future__ import annotations

from gateway.core.detokenize import IncrementalDetokenizer, StopMatcher, Utf8Detokenizer

__all__ = ["IncrementalDetokenizer", "StopMatcher", "Utf8Detokenizer"]
