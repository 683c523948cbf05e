"""The logprob blocks of /v1/completions: OpenAI's legacy ``logprobs`` object and vLLM's
per-prompt-token ``prompt_logprobs`` dictionaries (with each token's rank)."""

from __future__ import annotations

from typing import Any

from gateway.core.backend import GenerationDone, TokenLogprob


def legacy_logprobs(
    logprobs: int | None, echo: bool, done: GenerationDone, generated: list[TokenLogprob]
) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if echo and done.prompt_logprobs is not None:
        strs = done.prompt_token_strs or tuple(lp.token if lp else "" for lp in done.prompt_logprobs)
        for token, item in zip(strs, done.prompt_logprobs, strict=False):
            tokens.append(token)
            values.append(item.logprob if item else None)
            tops.append(_top_dict(item) if item else None)
    for item in generated:
        tokens.append(item.token)
        values.append(item.logprob)
        tops.append(_top_dict(item))
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _top_dict(item: TokenLogprob) -> dict[str, float]:
    """The top-K alternatives plus the chosen token itself (OpenAI: "up to logprobs+1")."""
    top = {t.token: t.logprob for t in item.top}
    top.setdefault(item.token, item.logprob)
    return top


def vllm_prompt_logprobs(done: GenerationDone) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for item in done.prompt_logprobs or ():
        if item is None:
            out.append(None)
            continue
        entry = {str(item.token_id): {"logprob": item.logprob, "rank": item.rank, "decoded_token": item.token}}
        for rank, top in enumerate(item.top, start=1):
            entry.setdefault(str(top.token_id), {"logprob": top.logprob, "rank": rank, "decoded_token": top.token})
        out.append(entry)
    return out
