"""A judge from its config (the ``type`` tag chooses the class)."""

from __future__ import annotations

from routers.cascade.selfcal.config import EmbeddingJudge, ExactJudge, JsonJudge, JudgeConfig, LlmJudge, NormalizedJudge
from routers.cascade.selfcal.judges.base import Judge
from routers.cascade.selfcal.judges.calling import EmbeddingSimilarity, LlmRubric
from routers.cascade.selfcal.judges.text import ExactMatch, JsonMatch, NormalizedMatch


def build_judge(config: JudgeConfig) -> Judge:
    match config:
        case ExactJudge():
            return ExactMatch(config)
        case NormalizedJudge():
            return NormalizedMatch(config)
        case JsonJudge():
            return JsonMatch(config)
        case EmbeddingJudge():
            return EmbeddingSimilarity(config)
        case LlmJudge():
            return LlmRubric(config)
