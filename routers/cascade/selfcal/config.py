"""Configuration of a cascade tier's self-calibration (``self_calibration:``, docs/cascade.md).

A tier with this block labels a uniform sample of its own traffic — does its answer agree with
the next tier's? — and refits its threshold from those labels so that the disagreement rate of
the answers it keeps stays under ``max_disagreement`` with probability ``confidence``
(:mod:`routers.cascade.selfcal.bound`). The judges' behaviour is in
:mod:`routers.cascade.selfcal.judges`; this module is pydantic only (layer 1).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.core.config import StrictModel


class ExactJudge(StrictModel):
    """Agree when the two answers are the same text (surrounding whitespace ignored if ``strip``)."""

    type: Literal["exact"]
    strip: bool = True


class NormalizedJudge(StrictModel):
    """Agree when the two answers say the same short thing: a choice letter, a number, or a
    short text equal after case folding, punctuation, articles and whitespace are dropped.

    ``extract``: ``letter`` compares the answers' choice letters (``B``, ``(B)``, ``Answer: B``),
    ``number`` their last numbers (``1,000`` = ``1000.0``, within ``number_tolerance`` relative),
    ``text`` the normalised texts, ``auto`` picks letter, then number, then text by what both
    answers look like.
    """

    type: Literal["normalized"]
    extract: Literal["auto", "letter", "number", "text"] = "auto"
    number_tolerance: float = Field(1e-9, ge=0.0, description="Relative tolerance between two numbers.")


class JsonJudge(StrictModel):
    """Agree when the two answers are the same JSON value (structured outputs) or make the same
    tool calls (same functions, in the same order, with equal parsed arguments): key order and
    whitespace do not matter, ``1`` equals ``1.0``; keys in ``ignore_keys`` are dropped at any
    depth (ids, timestamps). An answer that does not parse disagrees."""

    type: Literal["json"]
    ignore_keys: list[str] = Field(default_factory=list)
    number_tolerance: float = Field(0.0, ge=0.0, description="Relative tolerance between two numbers.")


class EmbeddingJudge(StrictModel):
    """Agree when the cosine similarity of the two answers' embeddings is at least
    ``min_similarity``; ``backend`` is an embeddings backend (``type: embedding``, the local
    embedder). Its call is priced at that backend's price and counted in the shadow budget."""

    type: Literal["embedding"]
    backend: str = Field(min_length=1)
    min_similarity: float = Field(0.9, ge=-1.0, le=1.0)


class LlmJudge(StrictModel):
    """Ask ``backend`` (any chat backend of the policy) a fixed rubric: do the two answers
    satisfy the request equally (same final answer, facts, code behaviour)? It replies SAME or
    DIFFERENT; any other reply counts as a disagreement (a judge's failure can only make the
    bound more conservative). Priced at that backend's price, counted in the shadow budget."""

    type: Literal["llm"]
    backend: str = Field(min_length=1)
    max_tokens: int = Field(4, ge=1, le=64, description="Cap on the judge's reply (one word is asked).")
    max_answer_chars: int = Field(4000, ge=100, description="Each answer (and the request) is cut to this length.")


JudgeConfig = Annotated[ExactJudge | NormalizedJudge | JsonJudge | EmbeddingJudge | LlmJudge,
                        Field(discriminator="type")]


class DriftCheck(StrictModel):
    """The alarm: every ``check_every`` labels, the newest 1/8, 1/4, 1/2 and all of ``window``
    labels are tested at the tier's current threshold: when the lower confidence bound on their
    kept answers' disagreement exceeds the target in one of them (each span at a Bonferroni share
    of ``1 - confidence``), the threshold is tightened at once, from those newest labels only
    (``CalibrationState.reason == "drift"``). A sharp drift shows in the short spans within tens
    of labels; a mild one only over longer spans, or in the regular refits.

    The check repeats for as long as traffic flows, so each one must rarely cry wolf: at 0.999 a
    threshold whose kept disagreement sits exactly at the target raises a false alarm in at most
    0.1 % of checks (and a threshold certified below the target far more rarely)."""

    window: int = Field(500, ge=10)
    check_every: int = Field(50, ge=1)
    confidence: float = Field(0.999, gt=0.5, lt=1.0)


class SelfCalibration(StrictModel):
    """A cascade tier that calibrates itself on the user's traffic (docs/cascade.md)."""

    judge: JudgeConfig
    sample_rate: float = Field(0.05, gt=0.0, le=1.0, description=(
        "Share of the tier's decided requests that are labelled, kept and escalated alike: kept ones are "
        "shadowed to the next tier; escalated ones (buffer mode) already have both answers."))
    max_concurrent: int = Field(4, ge=1, description="Shadow jobs of this model running at once.")
    budget_usd_per_day: float = Field(1.0, ge=0.0, description="Shadow and judge spend per UTC day.")
    max_disagreement: float = Field(0.05, gt=0.0, lt=1.0, description=(
        "Target: upper bound on the share of kept answers the judge finds disagreeing with the next tier."))
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Probability that the chosen threshold meets it.")
    min_labels: int = Field(1000, ge=1, description=(
        "Labels needed before a refit may move the threshold (tightening on a drift alarm needs none)."))
    refit_every: int = Field(100, ge=1, description="Refit after every N labels (counted over all replicas).")
    window: int = Field(3000, ge=10, description="Newest labels a refit uses.")
    candidates: int = Field(20, ge=2, le=1000, description=(
        "Thresholds tested, at kept shares 1/N, 2/N, ... 1 of the window's labels (strictest first)."))
    drift: DriftCheck = Field(default_factory=DriftCheck)
    apply: bool = Field(True, description="false: monitor only; the configured threshold keeps deciding.")
    refresh_seconds: float = Field(5.0, ge=0.0, description="How stale a replica's copy of the shared state may be.")

    @model_validator(mode="after")
    def _window(self) -> SelfCalibration:
        if self.window < self.min_labels:
            raise ValueError("self_calibration.window must hold at least min_labels labels, or it can never loosen")
        return self

    def judge_backend(self) -> str | None:
        """The backend the judge calls, if it calls one."""
        return judge_backend(self.judge)


def judge_backend(judge: JudgeConfig) -> str | None:
    """The backend ``judge`` calls, if it calls one."""
    return judge.backend if isinstance(judge, EmbeddingJudge | LlmJudge) else None
