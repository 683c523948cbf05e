"""Draft and target must share a vocabulary: token ids mean nothing across tokenizers.

In-process scorers declare a ``vocabulary_id`` (equal exactly when they map the same texts to
the same ids). A remote target is asked through its backend: the draft's ids for a probe text
are sent as a token-id prompt with prompt scores, and the text the target echoes for those
ids must start with the probe text again (another vocabulary turns the ids into other text).
"""

from __future__ import annotations

import logging

from gateway.core.backend import Backend, CompletionPrompt, GenerationDone, SamplingParams, TokenScorer
from gateway.core.errors import GatewayError

logger = logging.getLogger(__name__)

PROBE_TEXT = "Speculative decoding: def f(x):\n    return x * 2  # ünïcødé 42"


def decode(scorer: TokenScorer, ids: list[int]) -> str:
    detokenizer = scorer.new_detokenizer()
    return "".join(detokenizer.add(token) for token in ids)


async def remote_vocabulary_matches(target: Backend, scorer: TokenScorer) -> bool | None:
    """True / False when the target answered; None when it could not be asked (unreachable):
    the check is then made again on the first request. A target that echoes no prompt text
    cannot be checked at all (True, with a warning)."""
    ids = await scorer.tokenize(PROBE_TEXT)
    expected = decode(scorer, ids)
    done: GenerationDone | None = None
    try:
        async for event in target.stream_completion(CompletionPrompt(token_ids=ids, prompt_logprobs=0),
                                                    SamplingParams(max_tokens=1, temperature=0.0)):
            if isinstance(event, GenerationDone):
                done = event
    except GatewayError as exc:
        logger.warning("speculative: cannot check %s's vocabulary yet (%s)", target.name, exc)
        return None
    if done is None or done.prompt_text is None:
        logger.warning("speculative: %s echoes no prompt text; vocabulary check skipped", target.name)
        return True
    # A prefix test: some servers' echo carries the generated token after the prompt's text.
    return done.prompt_text.startswith(expected)
