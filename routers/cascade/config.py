"""Configuration of the ``cascade`` strategy (see docs/cascade.md)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from gateway.core.config import StrategyBase, StrictModel, anchored_path
from routers.cascade.selfcal.config import SelfCalibration

ScorerName = Literal["mean_logprob", "min_logprob", "quantile_logprob", "neg_entropy", "mean_margin",
                     "first_token_margin", "code_mean_logprob", "code_quantile_logprob", "code_confident_share"]


class Calibration(StrictModel):
    """Isotonic map from raw score to P(correct), as breakpoints (``x`` ascending)."""

    x: list[float] = Field(min_length=2)
    y: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _shape(self) -> Calibration:
        if len(self.x) != len(self.y):
            raise ValueError("calibration x and y must have the same length")
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValueError("calibration x must be ascending")
        if any(not 0.0 <= v <= 1.0 for v in self.y):
            raise ValueError("calibration y values are probabilities in [0, 1]")
        return self


class EarlyExit(StrictModel):
    """Stop the attempt once escalation is certain: the mean logprob of the last ``window``
    tokens fell below ``floor``, or one token fell below ``token_floor``."""

    window: int = Field(8, ge=1)
    floor: float = -2.5
    token_floor: float | None = None


class CascadeTier(StrictModel):
    # The last tier may be another public model, written ``model:NAME`` (e.g. a speculative
    # model: escalated requests are answered by the large model with the small one drafting).
    backend: str
    scorer: ScorerName = "mean_logprob"
    threshold: float | None = Field(None, description="Escalate when the (calibrated) score is below it.")
    calibration: Calibration | None = None
    max_tokens: int | None = Field(None, ge=1, description="Cap on this tier's attempt.")
    early_exit: EarlyExit | None = None
    structural: Literal["python", "python_examples"] | None = Field(
        None, description="python: an answer whose code does not parse, or does not define the function the "
                          "request's code defines last, escalates whatever its score (routers/cascade/code.py). "
                          "python_examples: that, and the function must return what the request's own examples "
                          "state, run in a sandboxed subprocess (routers/cascade/examples.py).")
    self_calibration: SelfCalibration | None = Field(
        None, description="Label a sample of this tier's traffic against the next tier and refit its threshold "
                          "to a disagreement target with a stated confidence (docs/cascade.md, Self-calibration).")


class RouterStage(StrictModel):
    """Optional pre-call stage: a learned router (``slm-gateway router train``) scores
    P(large model needed) from the request text before any tier runs. Below ``low`` the first
    tier answers with no confidence check; at or above ``high`` the last tier answers directly;
    in between the cascade runs as usual. It saves the small model's wasted attempt on
    obviously hard requests and the logprob bookkeeping on obviously easy ones."""

    router_dir: str = Field(min_length=1)
    low: float = Field(0.0, ge=0.0, le=1.0)
    high: float = Field(1.0, ge=0.0, le=1.0)
    embed: Literal["last_user", "conversation"] = "last_user"

    @model_validator(mode="after")
    def _band(self) -> RouterStage:
        if self.low > self.high:
            raise ValueError("router.low must not exceed router.high")
        return self


class CascadeStrategy(StrategyBase):
    """Try tiers in order; the last tier's answer is final."""

    type: Literal["cascade"]
    implementation: ClassVar[str] = "routers.cascade.strategy:Cascade"

    mode: Literal["buffer", "handoff"] = "buffer"
    tiers: list[CascadeTier] = Field(min_length=2)
    top_logprobs: int = Field(5, ge=0, le=20)
    router: RouterStage | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> CascadeStrategy:
        if self.mode == "handoff" and self.tiers[-1].backend.startswith("model:"):
            raise ValueError("handoff continues a prefix on a backend: the last tier cannot be a model:NAME")
        for index, tier in enumerate(self.tiers[:-1]):
            if tier.backend.startswith("model:"):
                raise ValueError(f"tiers[{index}]: only the last tier may be a model (its answer is not scored)")
            if tier.threshold is None:
                raise ValueError(f"tiers[{index}] needs a threshold (only the last tier has none)")
            if self.mode == "handoff" and tier.early_exit is None:
                raise ValueError(f"tiers[{index}] needs early_exit: hand-off switches tiers on the running check")
        self._self_calibration()
        return self

    def _self_calibration(self) -> None:
        if self.tiers[-1].self_calibration is not None:
            raise ValueError("the last tier cannot self-calibrate: its answers are final, there is no next tier")
        for index, tier in enumerate(self.tiers[:-1]):
            if tier.self_calibration is None or self.mode != "handoff":
                continue
            # In hand-off the running check decides and streamed tokens cannot be recalled: a
            # threshold has nothing to act on, and an escalated request has no full small answer.
            if index > 0:
                raise ValueError(f"tiers[{index}]: in handoff mode only the first tier can self-calibrate")
            if tier.self_calibration.apply:
                raise ValueError(f"tiers[{index}].self_calibration: in handoff mode the threshold plays no role; "
                                 "set apply: false (monitor only: agreement of the kept answers)")

    def tier_backends(self) -> list[str]:
        return [tier.backend for tier in self.tiers if not tier.backend.startswith("model:")]

    def referenced_backends(self) -> list[str]:
        # Judge backends count: they must exist, and they receive the request's text (privacy).
        names = self.tier_backends()
        for tier in self.tiers:
            judge = tier.self_calibration.judge_backend() if tier.self_calibration is not None else None
            if judge is not None and judge not in names:
                names.append(judge)
        return names

    def billed_backends(self) -> list[str]:
        # Judges and shadow calls are the gateway's spend (a shadow record, never the client's key).
        return self.tier_backends()

    def referenced_models(self) -> list[str]:
        return [tier.backend.removeprefix("model:") for tier in self.tiers if tier.backend.startswith("model:")]

    def anchored(self, base: Path) -> Self:
        if self.router is None:
            return self
        router = self.router.model_copy(update={"router_dir": anchored_path(self.router.router_dir, base)})
        return self.model_copy(update={"router": router})
