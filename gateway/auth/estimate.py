"""The worst-case cost reserved when a request starts (settled to the real cost when it ends).

``reservation = Σ over the priced backends the model can reach of
(prompt-token estimate × input price + max_tokens × output price)``.

* Reachable backends: those the model's strategy names, plus those of every model it
  delegates to (rules targets, cascade tiers), transitively. The sum (rather than the most
  expensive one) covers a cascade that pays for a small attempt and then the large model.
  Free backends (the in-process SLM) add nothing.
* ``max_tokens``: the request's ``max_tokens`` / ``max_completion_tokens``; when it gives
  none, each backend's own ceiling — ``default_max_tokens`` for a local model and the
  context length for a remote one (the upstream may write that much). Clients that set
  ``max_tokens`` reserve — and so block — less of their budget.
* Prompt tokens: exact for token-id prompts; otherwise UTF-8 bytes / 3 (+1) of the text (chat:
  of its JSON messages, whose syntax stands in for the chat template's tokens). English runs
  at ~4 bytes per token and CJK at ~3, so this is an over-estimate for nearly all input.

This admission reservation covers the model's own route. Every upstream call is then held
against it once more, just before it starts (:mod:`gateway.auth.meter`, with
:func:`call_worst_case` of the call's own prompt): a fallback model, a hand-off continuation,
a speculative verify round or anything else the reservation did not foresee extends the
reservation atomically in the key store first, or is refused (429) without being called.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import orjson

from gateway.auth.keys import usd_to_nano
from gateway.core.backend import ChatMessage, CompletionPrompt
from policies.schema import Policy

BYTES_PER_TOKEN_ESTIMATE = 3


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN_ESTIMATE) + 1


def chat_prompt_tokens(messages: Sequence[object]) -> int:
    try:
        return text_tokens(orjson.dumps(messages, default=_dump).decode())
    except TypeError:
        # orjson refuses integers beyond 64 bits (extra fields are free-form): the estimate
        # must never turn a valid request into a 500, so fall back to the stdlib encoder.
        return text_tokens(json.dumps(messages, default=_dump))


def _dump(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    if dump is None:
        raise TypeError(f"cannot estimate tokens of {type(value).__name__}")
    return dump(exclude_none=True)


def reachable_backends(policy: Policy, model: str) -> list[str]:
    seen_models: set[str] = set()
    backends: list[str] = []
    pending = [model]
    while pending:
        name = pending.pop()
        config = policy.models.get(name)
        if config is None or name in seen_models:
            continue
        seen_models.add(name)
        named = list(config.billed_backends())
        # Bare targets (rules, learned) resolve backend first, then model, when the strategy starts.
        for target in getattr(config, "referenced_targets", list)():
            if target in policy.backends:
                named.append(target)
            else:
                pending.append(target)
        backends.extend(b for b in named if b not in backends)
        pending.extend(config.referenced_models())
    return backends


def worst_case(policy: Policy, model: str, prompt_tokens: int, max_tokens: int | None) -> tuple[int, int]:
    """(reservation in nano-dollars, token estimate for TPM) for one request."""
    cost = 0.0
    longest = 0
    for name in reachable_backends(policy, model):
        backend = policy.backends.get(name)
        if backend is None:
            continue
        output = max_tokens if max_tokens is not None else backend.max_output_tokens()
        longest = max(longest, output)
        if backend.price.input_per_1m or backend.price.output_per_1m:
            cost += backend.price.cost(prompt_tokens, output)
    return usd_to_nano(cost), prompt_tokens + (longest if max_tokens is None else max_tokens)


def call_prompt_tokens(prompt: Sequence[ChatMessage] | CompletionPrompt) -> int:
    """The prompt estimate of one upstream call (its own messages: a hand-off's prefix included)."""
    if isinstance(prompt, CompletionPrompt):
        return len(prompt.token_ids) if prompt.token_ids is not None else text_tokens(prompt.text or "")
    return chat_prompt_tokens(list(prompt))


def call_worst_case(policy: Policy, backend_name: str, prompt_tokens: int, max_tokens: int | None) -> int:
    """Nano-dollars one call to ``backend_name`` can cost at most (0 for a free or unknown backend)."""
    backend = policy.backends.get(backend_name)
    if backend is None or not (backend.price.input_per_1m or backend.price.output_per_1m):
        return 0
    output = max_tokens if max_tokens is not None else backend.max_output_tokens()
    return usd_to_nano(backend.price.cost(prompt_tokens, output))
