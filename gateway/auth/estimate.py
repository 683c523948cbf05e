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

Strategies that call one backend several times (speculative decoding's verify rounds re-send
the prompt) can cost more than the reservation; the settled figure is still exact, and the
budget can then be overshot by at most that excess of the requests in flight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import orjson

from gateway.auth.keys import usd_to_nano
from gateway.backends.local.config import LocalBackend
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
        backends.extend(b for b in config.referenced_backends() if b not in backends)
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
        ceiling = backend.default_max_tokens if isinstance(backend, LocalBackend) else backend.context_length
        output = max_tokens if max_tokens is not None else ceiling
        longest = max(longest, output)
        if backend.price.input_per_1m or backend.price.output_per_1m:
            cost += backend.price.cost(prompt_tokens, output)
    return usd_to_nano(cost), prompt_tokens + (longest if max_tokens is None else max_tokens)
