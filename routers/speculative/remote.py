"""Verification by a remote target over ``/v1/completions`` (vLLM semantics; slm-gateway too).

One call per round: the prompt is the committed token ids plus the k drafts, with
``prompt_logprobs: K`` (each prompt position's own token with its rank, plus the top K) and
``max_tokens: 1`` (the token after the last draft: the bonus when every draft is kept).
Greedy is exact: a draft is kept while it is the target's rank-1 token, and the first
rank-1 token that differs is the correction. Sampling is an approximation: the target's
distribution is known only on its top K (plus the draft token), so the acceptance ratio
``p(x)/q(x)`` uses the exact ``p(x)`` at temperature 1 but the residual ``max(0, p - q)`` is
taken over those K tokens only (see docs/speculative.md for the measured effect).

Cost: vLLM (and slm-gateway) recompute the whole prompt for a prompt-logprobs request (vLLM
skips its prefix cache for it), so each round costs a prefill of the whole context; rounds
are kept few by drafting more tokens per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from gateway.core.errors import UpstreamError
from routers.speculative.acceptance import Verdict
from routers.speculative.decoding import Drafter, Generation, Round
from routers.speculative.forward import CausalLM


@dataclass(frozen=True, slots=True)
class PositionScores:
    """The target's view of one prompt position: the token there and its top-K alternatives."""

    token_id: int
    rank: int
    logprobs: dict[int, float]  # token id -> logprob (raw, temperature 1)

    def argmax(self) -> int:
        return min(self.logprobs, key=lambda t: (-self.logprobs[t], t))


@dataclass(frozen=True, slots=True)
class RemoteScores:
    positions: list[PositionScores]  # one per draft
    generated_token: int | None  # id of the token generated after the drafts, when known
    prompt_tokens: int
    completion_tokens: int


def parse_scores(payload: dict[str, Any], drafts: list[int], token_id_of: dict[str, int]) -> RemoteScores:
    """Read the prompt positions of ``drafts`` (the last ones) and the generated token."""
    choice = payload["choices"][0]
    raw = choice.get("prompt_logprobs")
    if not isinstance(raw, list) or len(raw) < len(drafts) or any(e is None for e in raw[len(raw) - len(drafts):]):
        raise UpstreamError("the target returned no prompt_logprobs: it cannot verify drafts",
                            code="speculative_verify_unsupported")
    positions = []
    for token, entry in zip(drafts, raw[len(raw) - len(drafts) :], strict=True):
        scores = {int(t): float(v["logprob"]) for t, v in entry.items()}
        rank = int((entry.get(str(token)) or {}).get("rank") or 0)
        positions.append(PositionScores(token_id=token, rank=rank, logprobs=scores))
    usage = payload.get("usage") or {}
    return RemoteScores(
        positions=positions, generated_token=_generated_token(choice, token_id_of),
        prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def _generated_token(choice: dict[str, Any], token_id_of: dict[str, int]) -> int | None:
    """vLLM with ``return_tokens_as_token_ids`` writes ``token_id:N``; otherwise map the text
    back to an id when exactly one vocabulary entry decodes to it."""
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    if not tokens:
        return None
    last = str(tokens[-1])
    if last.startswith("token_id:"):
        return int(last.removeprefix("token_id:"))
    return token_id_of.get(last)


def unique_decodings(tokenizer: Any) -> dict[str, int]:
    """Decoded text -> token id, for texts only one token decodes to (others are ambiguous)."""
    seen: dict[str, int] = {}
    ambiguous: set[str] = set()
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if text in seen:
            ambiguous.add(text)
        seen[text] = token_id
    return {text: token_id for text, token_id in seen.items() if text not in ambiguous and "\ufffd" not in text}


def remote_greedy_verdict(drafts: list[int], scores: RemoteScores) -> Verdict | None:
    """Exact greedy verdict; None when every draft is kept but the bonus token id is unknown."""
    for i, (token, position) in enumerate(zip(drafts, scores.positions, strict=True)):
        if position.token_id != token or position.rank != 1:
            return Verdict(i, position.argmax())
    if scores.generated_token is None:
        return None
    return Verdict(len(drafts), scores.generated_token)


def remote_sampling_verdict(
    drafts: list[int], draft_probs: torch.Tensor, scores: RemoteScores, temperature: float,
    generator: torch.Generator | None,
) -> Verdict | None:
    """Leviathan/Chen rule with the target's distribution known on its top K only."""
    for i, (token, position) in enumerate(zip(drafts, scores.positions, strict=True)):
        p = _tempered(position.logprobs, temperature)
        q = float(draft_probs[i, token])
        if q > 0.0 and float(torch.rand((), generator=generator)) < min(1.0, p.get(token, 0.0) / q):
            continue
        ids = list(p)
        residual = torch.tensor([max(0.0, p[t] - float(draft_probs[i, t])) for t in ids])
        if float(residual.sum()) <= 0.0:
            residual = torch.tensor([p[t] for t in ids])
        choice = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
        return Verdict(i, ids[choice])
    if scores.generated_token is None:
        return None
    return Verdict(len(drafts), scores.generated_token)


def _tempered(logprobs: dict[int, float], temperature: float) -> dict[int, float]:
    """Probabilities at ``temperature`` from raw (temperature-1) logprobs of the known tokens.

    Exact at temperature 1. Otherwise the known tokens keep their total mass and share it in
    proportion to ``exp(logprob / T)``: the unknown tail's mass cannot be re-tempered (an
    approximation, documented in docs/speculative.md).
    """
    if temperature == 1.0:
        return {t: math.exp(lp) for t, lp in logprobs.items()}
    top = max(logprobs.values())
    weights = {t: math.exp((lp - top) / temperature) for t, lp in logprobs.items()}
    known_mass = min(1.0, sum(math.exp(lp) for lp in logprobs.values()))
    total = sum(weights.values())
    return {t: known_mass * w / total for t, w in weights.items()}


class RemoteVerifier:
    """One ``/v1/completions`` call per round against an OpenAI-compatible server."""

    def __init__(self, client: httpx.AsyncClient, model: str, token_id_of: dict[str, int], top_k: int) -> None:
        self.client = client
        self.model = model
        self.token_id_of = token_id_of
        self.top_k = top_k

    async def score(
        self, context: list[int], drafts: list[int], temperature: float, top_p: float, seed: int | None
    ) -> RemoteScores:
        body: dict[str, Any] = {
            "model": self.model, "prompt": [*context, *drafts], "max_tokens": 1,
            "temperature": temperature, "logprobs": 1,
            "prompt_logprobs": 1 if temperature <= 0.0 else self.top_k,
            "return_tokens_as_token_ids": True,  # vLLM: generated token as "token_id:N"
        }
        if top_p != 1.0:
            body["top_p"] = top_p
        if seed is not None:
            body["seed"] = seed
        try:
            response = await self.client.post("/completions", json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"speculative target unreachable: {exc.__class__.__name__}",
                                code="upstream_unreachable") from None
        if response.status_code >= 400:
            raise UpstreamError(f"speculative target answered HTTP {response.status_code}: {response.text[:300]}",
                                code="upstream_error")
        payload: dict[str, Any] = response.json()
        return parse_scores(payload, drafts, self.token_id_of)


async def remote_rounds(
    generation: Generation, draft: CausalLM, verifier: RemoteVerifier, draft_lock: asyncio.Lock | None = None
) -> AsyncGenerator[Round, None]:
    """Rounds of local drafting (in a worker thread) and remote verification, until finished."""
    decoding = generation.decoding
    drafter = Drafter(draft, decoding, generation.generator)
    await asyncio.to_thread(drafter.prefill, generation.sequence[:-1])
    while True:
        k = generation.next_k()
        if k == 0:
            yield Round([], "length")
            return
        started = time.perf_counter()
        async with draft_lock or contextlib.nullcontext():
            drafts, draft_probs = await asyncio.to_thread(drafter.propose, generation.sequence, k)
        drafted_at = time.perf_counter()
        scores = await verifier.score(generation.sequence, drafts, decoding.temperature, decoding.top_p, decoding.seed)
        generation.stats.target_prompt_tokens += scores.prompt_tokens
        if draft_probs is None:
            verdict = remote_greedy_verdict(drafts, scores)
        else:
            verdict = remote_sampling_verdict(drafts, draft_probs, scores, decoding.temperature, generation.generator)
        # None: every draft kept but the bonus token's id is unknown; emit the drafts only.
        new_tokens = drafts if verdict is None else [*drafts[: verdict.accepted], verdict.next_token]
        accepted = k if verdict is None else verdict.accepted
        generation.account(k, accepted, drafted_at - started, time.perf_counter() - drafted_at)
        drafter.rollback(len(generation.sequence) + accepted)
        step = generation.commit(new_tokens)
        yield step
        if step.finish:
            return
