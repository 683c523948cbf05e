"""One request's speculative generation: the committed sequence and what it cost.

:class:`Generation` holds the prompt plus every verified token; each round commits the
target's tokens (up to EOS or the length limit) and records what the round drafted, kept and
spent, so the request record can show the speed-up reached next to the one the measured
costs allow (:mod:`routers.speculative.controller`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Decoding:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class Round:
    tokens: list[int]  # verified tokens to emit (EOS excluded)
    finish: str | None  # "stop" | "length" | None (more rounds to come)
    text: str | None = None  # a remote target's own text (the rest of the answer, target alone)


@dataclass(slots=True)
class DrafterStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejections: int = 0  # rounds that ended on a rejected draft
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "rejections": self.rejections,
                "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else None,
                "seconds": round(self.seconds, 4)}


@dataclass(slots=True)
class SpeculationStats:
    """Per-request accounting (``record.extra["speculative"]``, docs/speculative.md)."""

    rounds: int = 0  # verification passes with at least one draft
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    target_passes: int = 0  # every target pass (or remote call) after calibration, k=0 steps included
    alone_tokens: int = 0  # tokens the target decoded alone (k=0: speculation would not pay)
    probes: int = 0  # speculative rounds tried while the controller had switched speculation off
    target_prompt_tokens: int = 0  # remote: prompt tokens billed over all verification calls
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    alone_seconds: float = 0.0
    calibration_seconds: float = 0.0
    wall_seconds: float = 0.0  # the decoding loop's wall time (calibration excluded)
    modelled_steps: float = 0.0  # the rounds' cost in target decode steps, from the measured costs
    k_history: list[int] = field(default_factory=list)
    drafters: dict[str, DrafterStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else None,
            "emitted": self.emitted, "target_passes": self.target_passes,
            "target_passes_per_token": round(self.target_passes / self.emitted, 4) if self.emitted else None,
            "alone_tokens": self.alone_tokens, "probes": self.probes,
            "target_prompt_tokens": self.target_prompt_tokens,
            "draft_seconds": round(self.draft_seconds, 4), "verify_seconds": round(self.verify_seconds, 4),
            "alone_seconds": round(self.alone_seconds, 4), "calibration_seconds": round(self.calibration_seconds, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "k_history": list(self.k_history),
            "drafters": {name: stats.as_dict() for name, stats in self.drafters.items()},
        }


class Generation:
    """The committed sequence (prompt + verified tokens) and the per-request statistics."""

    def __init__(self, prompt_ids: Sequence[int], eos_ids: frozenset[int], decoding: Decoding) -> None:
        if not prompt_ids:
            raise ValueError("prompt must not be empty")
        self.sequence = list(prompt_ids)
        self.prompt_tokens = len(prompt_ids)
        self.eos_ids = eos_ids
        self.decoding = decoding
        self.stats = SpeculationStats()
        self.since_speculation = 0  # tokens decoded by the target alone since the last speculative round

    @property
    def generated(self) -> int:
        return len(self.sequence) - self.prompt_tokens

    @property
    def remaining(self) -> int:
        return self.decoding.max_new_tokens - self.generated

    def account_round(self, drafter: str, k: int, accepted: int, draft_seconds: float, verify_seconds: float,
                      steps: float, probe: bool) -> None:
        stats = self.stats
        stats.rounds += 1
        stats.drafted += k
        stats.accepted += accepted
        stats.target_passes += 1
        stats.draft_seconds += draft_seconds
        stats.verify_seconds += verify_seconds
        stats.modelled_steps += steps
        stats.probes += int(probe)
        stats.k_history.append(k)
        per = stats.drafters.setdefault(drafter, DrafterStats())
        per.rounds += 1
        per.drafted += k
        per.accepted += accepted
        per.rejections += int(accepted < k)
        per.seconds += draft_seconds
        self.since_speculation = 0

    def account_alone(self, tokens: int, seconds: float, passes: int = 1) -> None:
        stats = self.stats
        stats.target_passes += passes
        stats.alone_tokens += tokens
        stats.alone_seconds += seconds
        stats.modelled_steps += tokens
        stats.k_history.append(0)
        self.since_speculation += tokens

    def commit(self, new_tokens: Sequence[int]) -> Round:
        """Append verified tokens up to EOS (excluded) or the length limit."""
        emitted: list[int] = []
        finish: str | None = None
        for token in new_tokens:
            if token in self.eos_ids:
                finish = "stop"
                break
            emitted.append(token)
            if self.generated + len(emitted) >= self.decoding.max_new_tokens:
                finish = "length"
                break
        self.sequence.extend(emitted)
        self.stats.emitted += len(emitted)
        return Round(emitted, finish)
