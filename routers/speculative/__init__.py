"""Speculative decoding: a small model drafts, a large model verifies (docs/speculative.md)."""
