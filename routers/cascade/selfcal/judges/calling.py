"""Judges that call a backend: ``embedding`` (cosine similarity) and ``llm`` (a fixed rubric).

Their call is made through the shadow job's context, so it is recorded in the shadow record
(``used: False``, ``purpose: "judge"``), priced at the judge backend's own price and counted in
the model's shadow budget — never in the client's record or bill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.core.backend import ChatMessage, GenerationDone, SamplingParams
from gateway.core.config import Price
from gateway.core.strategy import ChatRequestView, RequestContext
from routers.cascade.selfcal.config import EmbeddingJudge, LlmJudge
from routers.cascade.selfcal.judges.base import Answer, Judge, Verdict, estimated_tokens

JUDGE_PURPOSE = "judge"

RUBRIC = (
    "You compare two answers to the same request. Reply with one word: SAME if a user would be "
    "equally well served by either answer (the same final answer, the same facts, code that "
    "behaves the same; wording, length and formatting may differ), DIFFERENT otherwise."
)


class EmbeddingSimilarity(Judge):
    type = "embedding"

    def __init__(self, config: EmbeddingJudge) -> None:
        self.config = config

    async def judge(self, request: ChatRequestView, small: Answer, large: Answer, ctx: RequestContext) -> Verdict:
        try:
            result = await ctx.call_embeddings(self.config.backend, [small.as_text(), large.as_text()], {})
        finally:
            _mark_judge_call(ctx)
        similarity = cosine(result.vectors[0], result.vectors[1])
        return Verdict(similarity >= self.config.min_similarity, {"similarity": round(similarity, 6)})

    def estimated_cost_usd(self, request: ChatRequestView, small: Answer, large: Answer,
                           prices: Mapping[str, Price]) -> float:
        price = prices.get(self.config.backend)
        return price.cost(estimated_tokens(small.as_text(), large.as_text()), 0) if price else 0.0


def cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm > 0 else 0.0


class LlmRubric(Judge):
    type = "llm"

    def __init__(self, config: LlmJudge) -> None:
        self.config = config

    def messages(self, request: ChatRequestView, small: Answer, large: Answer) -> list[ChatMessage]:
        cut = self.config.max_answer_chars
        # The reference (next tier) is shown first and the judged answer second, always: a fixed
        # order keeps any position bias of the judge the same for every label.
        body = (f"Request:\n{request.last_user_text()[:cut]}\n\nAnswer 1:\n{large.as_text()[:cut]}\n\n"
                f"Answer 2:\n{small.as_text()[:cut]}\n\nSAME or DIFFERENT?")
        return [ChatMessage(role="system", content=RUBRIC), ChatMessage(role="user", content=body)]

    async def judge(self, request: ChatRequestView, small: Answer, large: Answer, ctx: RequestContext) -> Verdict:
        params = SamplingParams(max_tokens=self.config.max_tokens, temperature=0.0)
        texts: list[str] = []
        try:
            async for event in ctx.call_chat(self.config.backend, self.messages(request, small, large), params,
                                             purpose=JUDGE_PURPOSE):
                if not isinstance(event, GenerationDone):
                    texts.append(event.text)
        finally:
            _mark_judge_call(ctx)
        reply = "".join(texts).strip()
        word = reply.split()[0].strip(".,:;!\"'*").upper() if reply else ""
        if word not in ("SAME", "DIFFERENT"):
            # Not a verdict: counted as a disagreement, so a failing judge can only make the
            # threshold stricter, never looser.
            return Verdict(False, {"reply": reply[:200], "unparsed": True})
        return Verdict(word == "SAME", {"reply": reply[:200]})

    def estimated_cost_usd(self, request: ChatRequestView, small: Answer, large: Answer,
                           prices: Mapping[str, Price]) -> float:
        price = prices.get(self.config.backend)
        if price is None:
            return 0.0
        cut = self.config.max_answer_chars
        prompt = estimated_tokens(RUBRIC, request.last_user_text()[:cut], small.as_text()[:cut], large.as_text()[:cut])
        return price.cost(prompt, self.config.max_tokens)


def _mark_judge_call(ctx: RequestContext) -> None:
    if ctx.record.calls:
        call = ctx.last_call()
        call.used, call.purpose = False, JUDGE_PURPOSE
