"""Token selection and log-probabilities from raw logits (pure tensor functions).

Reported logprobs are those of the model's *raw* distribution (log-softmax of the logits,
before temperature / top-p), as vLLM reports them by default: they measure the model's
confidence, which is what cascades calibrate on, independently of the sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class TokenDraw:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def draw_token(
    logits: torch.Tensor, temperature: float, top_p: float, top_k_logprobs: int,
    generator: torch.Generator | None,
) -> TokenDraw:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if temperature <= 0.0:
        token = int(torch.argmax(logprobs))
    else:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            probs = _top_p_filter(probs, top_p)
        token = int(torch.multinomial(probs, 1, generator=generator))
    top: list[tuple[int, float]] = []
    if top_k_logprobs > 0:
        values, indices = torch.topk(logprobs, top_k_logprobs)
        top = list(zip(indices.tolist(), values.tolist(), strict=True))
    return TokenDraw(token, float(logprobs[token]), top)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    remove = cumulative - sorted_probs > top_p
    sorted_probs[remove] = 0.0
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum()


PromptScore = tuple[float, int, list[tuple[int, float]]] | None  # (logprob, rank, top-K)


def prompt_token_logprobs(logits: torch.Tensor, prompt_ids: list[int], top_k: int) -> list[PromptScore]:
    """Logprob and rank of each prompt token given the tokens before it; ``None`` for the first."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.tensor(prompt_ids[1:], dtype=torch.long)
    chosen_t = logprobs.gather(1, targets.unsqueeze(1))
    ranks = ((logprobs > chosen_t).sum(dim=1) + 1).tolist()
    chosen = chosen_t.squeeze(1).tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if top_k > 0:
        values, indices = torch.topk(logprobs, top_k, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    result: list[PromptScore] = [None]
    result.extend((lp, rank, top) for lp, rank, top in zip(chosen, ranks, tops, strict=True))
    return result
