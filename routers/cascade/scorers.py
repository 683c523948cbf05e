"""Confidence scorers: pure functions from an answer's token logprobs to one number.

Higher means more confident, for every scorer, so one rule serves all of them: escalate when
the (calibrated) score is below the tier's threshold. Each reads only what an
OpenAI-compatible server returns with ``logprobs`` / ``top_logprobs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from gateway.core.backend import TokenLogprob
from routers.cascade.code import code_tokens

Scorer = Callable[[Sequence[TokenLogprob]], float]
EMPTY_SCORE = -math.inf  # an answer with no tokens carries no evidence of confidence


def mean_logprob(tokens: Sequence[TokenLogprob]) -> float:
    """Mean log-probability of the chosen tokens: the log of the per-token geometric-mean
    probability. Length-normalised, but one confidently wrong span can hide in a long answer."""
    if not tokens:
        return EMPTY_SCORE
    return sum(t.logprob for t in tokens) / len(tokens)


def min_logprob(tokens: Sequence[TokenLogprob]) -> float:
    """The least likely chosen token: the single weakest step of the answer. Length-robust in
    the sense that long answers are not averaged into confidence."""
    return min((t.logprob for t in tokens), default=EMPTY_SCORE)


def quantile_logprob(tokens: Sequence[TokenLogprob], q: float = 0.1) -> float:
    """The q-quantile (default 10 %) of chosen-token logprobs: like ``min_logprob`` but not
    decided by one outlier token."""
    if not tokens:
        return EMPTY_SCORE
    values = sorted(t.logprob for t in tokens)
    position = q * (len(values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def _entropy(token: TokenLogprob) -> float:
    # Entropy over the returned top-k alternatives, renormalised to sum to one: a lower bound
    # on the model's full entropy that ranks tokens the same way when k is fixed.
    candidates = token.top or (token,)
    probs = [math.exp(c.logprob) for c in candidates]
    total = sum(probs)
    return -sum(p / total * math.log(p / total) for p in probs if p > 0)


def neg_entropy(tokens: Sequence[TokenLogprob]) -> float:
    """Minus the mean (top-k renormalised) entropy per token: how peaked the model's choices were."""
    if not tokens:
        return EMPTY_SCORE
    return -sum(_entropy(t) for t in tokens) / len(tokens)


def _margin(token: TokenLogprob) -> float:
    ranked = sorted((c.logprob for c in token.top), reverse=True)
    if len(ranked) < 2:
        return math.exp(token.logprob)  # no alternative returned: fall back to its probability
    return math.exp(ranked[0]) - math.exp(ranked[1])


def mean_margin(tokens: Sequence[TokenLogprob]) -> float:
    """Mean probability gap between the top-1 and top-2 alternatives per token."""
    if not tokens:
        return EMPTY_SCORE
    return sum(_margin(t) for t in tokens) / len(tokens)


def first_token_margin(tokens: Sequence[TokenLogprob]) -> float:
    """Top-1/top-2 probability gap of the first token: for short answers (a letter, a number,
    yes/no) the first token *is* the decision, and its margin separates right from wrong well."""
    if not tokens:
        return EMPTY_SCORE
    first = next((t for t in tokens if t.token.strip()), tokens[0])
    return _margin(first)


LOW_MARGIN = 0.3  # a code token chosen by less than this top-1/top-2 probability gap was a near tie


def code_mean_logprob(tokens: Sequence[TokenLogprob]) -> float:
    """``mean_logprob`` over the answer's code block only: the Markdown fences and any prose
    around the code are near-certain tokens that would dilute the body's uncertainty."""
    return mean_logprob(code_tokens(tokens))


def code_quantile_logprob(tokens: Sequence[TokenLogprob]) -> float:
    """``quantile_logprob`` (10 %) over the code block: the body's weak steps, not one outlier."""
    return quantile_logprob(code_tokens(tokens))


def code_confident_share(tokens: Sequence[TokenLogprob]) -> float:
    """One minus the share of code tokens chosen with a top-1/top-2 margin below ``LOW_MARGIN``:
    code is mostly forced tokens (syntax, names already in the prompt); the near ties are where
    the model decided the logic."""
    inside = code_tokens(tokens)
    if not inside:
        return EMPTY_SCORE
    return 1.0 - sum(_margin(t) < LOW_MARGIN for t in inside) / len(inside)


SCORERS: dict[str, Scorer] = {
    "mean_logprob": mean_logprob,
    "min_logprob": min_logprob,
    "quantile_logprob": quantile_logprob,
    "neg_entropy": neg_entropy,
    "mean_margin": mean_margin,
    "first_token_margin": first_token_margin,
    "code_mean_logprob": code_mean_logprob,
    "code_quantile_logprob": code_quantile_logprob,
    "code_confident_share": code_confident_share,
}
