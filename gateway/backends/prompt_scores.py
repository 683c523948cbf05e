"""Read an upstream's echoed prompt scores (legacy ``logprobs`` block and vLLM's
``prompt_logprobs``) into our per-token :class:`TokenLogprob` records.

vLLM's ``prompt_logprobs`` carries token ids and ranks, which a verifier needs; the legacy
block carries only token strings. When both are present, ids and ranks come from the former.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.backend import TokenLogprob, TopLogprob


@dataclass(frozen=True, slots=True)
class EchoSplit:
    prompt_logprobs: tuple[TokenLogprob | None, ...]
    prompt_text: str
    prompt_token_strs: tuple[str, ...]
    answer_text: str
    answer_logprobs: tuple[TokenLogprob, ...]


def _vllm_entry(entry: dict[str, Any] | None, token_id: int | None, fallback_token: str) -> TokenLogprob | None:
    if not entry:
        return None
    items = sorted(((int(k), v) for k, v in entry.items()), key=lambda kv: kv[1].get("rank") or 1 << 30)
    chosen_id = token_id if token_id is not None and token_id in dict(items) else None
    if chosen_id is None:  # no ids given: the chosen token is the one whose text matches
        chosen_id = next((k for k, v in items if v.get("decoded_token") == fallback_token), items[0][0])
    chosen = dict(items)[chosen_id]
    top = tuple(TopLogprob(str(v.get("decoded_token", "")), float(v["logprob"]), k) for k, v in items)
    return TokenLogprob(token=str(chosen.get("decoded_token", fallback_token)), logprob=float(chosen["logprob"]),
                        token_id=chosen_id, top=top, rank=chosen.get("rank"))


def split_echo(choice: dict[str, Any], n_prompt: int, prompt_ids: Sequence[int] | None) -> EchoSplit:
    block = choice.get("logprobs") or {}
    tokens: list[str] = list(block.get("tokens") or [])
    values: list[float | None] = list(block.get("token_logprobs") or [])
    tops: list[dict[str, float] | None] = list(block.get("top_logprobs") or [None] * len(tokens))
    offsets: list[int] = list(block.get("text_offset") or [])
    text = str(choice.get("text", ""))
    cut = offsets[n_prompt] if len(offsets) > n_prompt else len(text)
    vllm = choice.get("prompt_logprobs")
    prompt: list[TokenLogprob | None] = []
    for i in range(n_prompt):
        token = tokens[i] if i < len(tokens) else ""
        if vllm is not None and i < len(vllm):
            token_id = prompt_ids[i] if prompt_ids is not None and i < len(prompt_ids) else None
            prompt.append(_vllm_entry(vllm[i], token_id, token))
            continue
        value = values[i] if i < len(values) else None
        alternatives = tuple(TopLogprob(t, float(lp)) for t, lp in (tops[i] or {}).items()) if i < len(tops) else ()
        prompt.append(None if value is None else TokenLogprob(token=token, logprob=float(value), top=alternatives))
    answer = []
    for i in range(n_prompt, len(tokens)):
        value = values[i] if i < len(values) else None
        if value is not None:
            alternatives = tuple(TopLogprob(t, float(lp)) for t, lp in (tops[i] or {}).items())
            answer.append(TokenLogprob(token=tokens[i], logprob=float(value), top=alternatives))
    return EchoSplit(tuple(prompt), text[:cut], tuple(tokens[:n_prompt]), text[cut:], tuple(answer))
