"""``predicted`` mode: targets that cannot score drafts (cloud APIs) get the draft as a hint.

The small model writes its whole answer first; that text is sent to the target as OpenAI's
Predicted Outputs ``prediction`` parameter, and the target streams its own answer, faster
where it agrees with the prediction. The answer is always the target's; the usage's
``accepted_prediction_tokens`` / ``rejected_prediction_tokens`` say how much the draft helped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from gateway.core.backend import GenerationDone, TokenChunk
from gateway.core.strategy import AnswerDone, ChatRequestView, RequestContext, StrategyEvent


async def predicted_answer(
    request: ChatRequestView, ctx: RequestContext, draft: str, target: str
) -> AsyncIterator[StrategyEvent]:
    prediction: list[str] = []
    draft_params = replace(request.params, logprobs=False, top_logprobs=0)
    async for event in ctx.call_chat(draft, request.messages, draft_params, purpose="draft"):
        if isinstance(event, TokenChunk):
            prediction.append(event.text)
    draft_call = ctx.last_call()
    extra = dict(request.params.extra)
    extra["prediction"] = {"type": "content", "content": "".join(prediction)}
    async for event in ctx.call_chat(target, request.messages, replace(request.params, extra=extra)):
        if isinstance(event, GenerationDone):
            details = _prediction_details(ctx.last_call().extra)
            ctx.record.extra["speculative"] = {
                "mode": "predicted", "rounds": 1, "drafted": draft_call.completion_tokens,
                "accepted": details.get("accepted_prediction_tokens"),
                "rejected": details.get("rejected_prediction_tokens"),
                "target_calls": 1,
            }
            yield AnswerDone.of(event)
        else:
            yield event


def _prediction_details(extra: dict[str, Any]) -> dict[str, Any]:
    """The usage's completion_tokens_details, when the backend kept it (else accepted/rejected
    are recorded as None)."""
    details = extra.get("completion_tokens_details") or extra
    return {k: details.get(k) for k in ("accepted_prediction_tokens", "rejected_prediction_tokens")}
