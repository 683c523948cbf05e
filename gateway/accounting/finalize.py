"""Derived fields of a finished request's record: totals, cost, counterfactual, savings.

A pure function, called by the app once the response is complete (or failed) and before the
record is submitted, so the response headers and the stored record agree on one figure.
"""

from __future__ import annotations

from gateway.core.config import Price
from gateway.core.record import RequestRecord


def finalize_record(record: RequestRecord, reference_price: Price | None) -> RequestRecord:
    """Fill totals, cost, reference cost and savings in place; return the record.

    Calls are not priced here: each was priced once, when it ended
    (:meth:`gateway.core.strategy.RequestContext.price_call`, which a key's per-call budget hold
    also settles against); the record's figures are sums of those.

    * ``cost_usd`` is the sum over ALL upstream calls, used or not: a cascade's discarded
      small-model attempt and a failed call that was billed are real spend.
    * ``wasted_cost_usd`` is the part of it spent on calls whose output was not used.
    * Token totals are the answer's usage (what the client's ``usage`` reports). When the app
      already set them from the strategy's final event they are kept; otherwise (the answer
      failed or was cut off) they are derived from the used calls: completion tokens are
      summed, but the prompt is counted once — every used call of a cascade or speculative
      round re-sends the same prompt, so summing would bill the client's prompt N times. The
      first used call with a non-zero prompt is the request's prompt as the answering model
      saw it (later speculative rounds carry accepted text in their prompt, so ``max`` would
      over-count).
    * ``reference_cost_usd`` prices those answer tokens at the reference LLM's rates: what the
      same request would have cost had it always gone to the LLM (an estimate: the LLM's
      tokenizer may count slightly differently). ``None`` when the policy names no reference.
    * ``savings_usd = reference_cost_usd - cost_usd``; negative when routing cost more (a
      cascade that escalated paid for both attempts).
    """
    used = [call for call in record.calls if call.used]
    if record.prompt_tokens <= 0 and record.completion_tokens <= 0:
        record.prompt_tokens = next((c.prompt_tokens for c in used if c.prompt_tokens > 0), 0)
        record.completion_tokens = sum(c.completion_tokens for c in used)
    record.cost_usd = sum((call.cost_usd for call in record.calls), 0.0)
    record.wasted_cost_usd = sum((call.cost_usd for call in record.calls if not call.used), 0.0)
    if reference_price is None:
        record.reference_cost_usd = None
        record.savings_usd = None
    else:
        record.reference_cost_usd = reference_price.cost(record.prompt_tokens, record.completion_tokens)
        record.savings_usd = record.reference_cost_usd - record.cost_usd
    return record
