"""The self-calibrating cascade's contract between the strategy and the service (issue 22).

A cascade with ``self_calibration`` in its config (``routers/cascade/selfcal/``) labels its own
traffic: for a sampled share of requests it learns whether the small tier's answer agrees with
the next tier's (a *label*), and refits its threshold from those labels so that the kept
answers' disagreement rate stays under the user's target with a stated confidence.

Two things it needs from the service layer, reached through :class:`GatewayResources`:

* :class:`ShadowRunner` — runs a *shadow job* off the client's path: the client already has its
  answer; the job calls the next tier in the background (bounded concurrency and budget), and
  its upstream calls are accounted in a record of their own (endpoint ``shadow``, every call
  ``used: False``, ``purpose: "shadow"``), never in the client's record, never billed to the
  client's key.
* :class:`SelfCalibrationStore` — the shared store (Redis when ``REDIS_URL`` is set, the
  embedded store otherwise) that holds labels and each cascade's current
  :class:`CalibrationState`, so every replica applies the same threshold.

Both are optional (``None``): a gateway without them runs cascades exactly as configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core.strategy import RequestContext


@dataclass(frozen=True, slots=True)
class Label:
    """One judged pair: the small tier's answer against the next tier's, for one request."""

    model: str  # the cascade's public model name
    tier: int  # index of the judged (small) tier
    score: float  # the tier's *raw* confidence score (before calibration), as the scorer gave it
    kept: bool  # whether the cascade kept the small answer (False: it escalated; the pair was free)
    agree: bool  # the judge's verdict
    judge: str  # the judge's type tag
    small_text: str
    large_text: str
    request_id: str
    created_at: float
    detail: dict[str, Any] = field(default_factory=dict)  # judge specifics (similarity, rubric reply...)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class CalibrationState:
    """A cascade tier's threshold as the recalibrator last set it, shared by every replica."""

    model: str
    tier: int
    version: int  # increases by one on every change; a write with a stale version is refused
    threshold: float  # on the *raw* score scale; the strategy compares raw scores to it
    labels_used: int  # labels the threshold was chosen on
    disagreement_bound: float  # upper confidence bound on the kept answers' disagreement rate
    disagreement_estimate: float  # point estimate on the labelled kept set
    confidence: float  # the bound's confidence level (e.g. 0.95)
    kept_share: float  # share of labelled requests the threshold keeps on the small tier
    reason: str  # "initial" | "loosened" | "tightened" | "drift" | "held" ...
    updated_at: float
    calibration_x: tuple[float, ...] = ()  # refitted isotonic map (raw score -> P(agree)), breakpoints
    calibration_y: tuple[float, ...] = ()
    # Labels created before this time describe the traffic before a drift alarm: refits skip them
    # (0: use every label). Set when reason becomes "drift", carried over by later states.
    labels_since: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["calibration_x"], data["calibration_y"] = list(self.calibration_x), list(self.calibration_y)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationState:
        values = dict(data)
        values["calibration_x"] = tuple(values.get("calibration_x", ()))
        values["calibration_y"] = tuple(values.get("calibration_y", ()))
        return cls(**values)


# The threshold of a state that certifies no threshold at all: every request escalates. Finite (the
# largest float) so any JSON store keeps it; no score reaches it.
ESCALATE_ALL = 1.7976931348623157e308

ShadowJob = Callable[[RequestContext], Awaitable[None]]


class ShadowRunner(Protocol):
    """Runs shadow jobs in the background, within a concurrency cap and a budget per model."""

    def submit(self, model: str, job: ShadowJob, *, max_concurrent: int, budget_usd_per_day: float,
               estimated_cost_usd: float) -> bool:
        """Start ``job`` now, off the caller's path, with a fresh :class:`RequestContext` whose
        record is the shadow record; return False (and start nothing) when ``model``'s shadow jobs
        already run ``max_concurrent`` at once or the day's shadow spend plus the estimate would
        exceed the budget. Never blocks, never raises for a full runner."""
        ...


class SelfCalibrationStore(Protocol):
    """Labels and calibration states, shared by every replica."""

    async def add_label(self, label: Label) -> int:
        """Append a label; return how many labels were ever added for ``label.model``/``label.tier``
        (over all replicas). The store keeps only the newest ones (``SLM_GATEWAY_SELFCAL_MAX_LABELS``),
        but this count keeps growing, so "every N labels" stays true to its word on a full store."""
        ...

    async def labels(self, model: str, tier: int, limit: int) -> Sequence[Label]:
        """The newest ``limit`` labels, oldest first."""
        ...

    async def get_state(self, model: str, tier: int) -> CalibrationState | None: ...

    async def put_state(self, state: CalibrationState) -> bool:
        """Store ``state`` if its version is exactly one more than the stored one (or 1 when none
        is stored); False when another replica got there first."""
        ...
