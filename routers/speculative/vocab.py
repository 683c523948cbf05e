"""Draft and target must share a tokenizer: token ids mean nothing across vocabularies."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx

logger = logging.getLogger(__name__)

PROBE_TEXT = "Speculative decoding: def f(x):\n    return x * 2  # ünïcødé 42"


def vocabulary_digest(tokenizer: Any) -> str:
    """A hash of the token -> id map (special tokens included)."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()


def same_vocabulary(draft_tokenizer: Any, target_tokenizer: Any) -> bool:
    if draft_tokenizer is target_tokenizer:
        return True
    return vocabulary_digest(draft_tokenizer) == vocabulary_digest(target_tokenizer)


async def remote_tokenization_matches(
    client: httpx.AsyncClient, root_url: str, model: str, tokenizer: Any
) -> bool | None:
    """Compare the probe's ids with the server's ``POST /tokenize`` (vLLM's); None when the
    server has no such endpoint (the check is then skipped, see docs/speculative.md)."""
    try:
        response = await client.post(f"{root_url}/tokenize", json={"model": model, "prompt": PROBE_TEXT,
                                                                    "add_special_tokens": False})
    except httpx.HTTPError as exc:
        logger.warning("speculative: cannot reach %s/tokenize (%s); tokenizer check skipped", root_url, exc)
        return None
    if response.status_code in (404, 405):
        return None
    if response.status_code >= 400:
        logger.warning("speculative: %s/tokenize answered %s; tokenizer check skipped", root_url, response.status_code)
        return None
    remote = response.json().get("tokens")
    local: list[int] = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    return bool(remote == local)
