"""The self-calibration store: labels, calibration states and the shadow budget, shared by replicas.

Both implementations — Redis (``selfcal_redis.py``, when ``REDIS_URL`` is set) and the embedded
SQLite file ``<data dir>/selfcal.sqlite3`` (``selfcal_sqlite.py``, which several worker
processes of one host share) — are the strategy's
:class:`~gateway.core.selfcal.SelfCalibrationStore` plus what the service needs around it:

* **Labels** per (model, tier), the newest ``max_labels`` kept; :meth:`add_label` returns how many
  were ever added (a counter that keeps growing past the cap, so "refit every N labels" works on
  a full list too).
* **States**: compare-and-set on the version, atomically in the store, so of two replicas racing
  to store version ``v + 1`` exactly one wins. A stored state with reason ``drift`` also counts
  one drift alarm for the tier.
* **The shadow ledger**: a per-model, per-UTC-day budget in integer nano-dollars. A shadow job
  *holds* its estimate before it starts (refused when spent + every open hold + this one would
  pass the budget — one atomic step, so N replicas together never exceed it), may grow its hold
  before each further call, and *settles* it to the real cost when it ends. A hold whose
  process died lapses after ``hold_ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.accounting.selfcal_settings import DEFAULT_HOLD_TTL_S, DEFAULT_MAX_LABELS
from gateway.core.selfcal import CalibrationState, Label
from gateway.redis_pool import RedisPoolSettings

DRIFT = "drift"


class StoreError(Exception):
    """The self-calibration store is unreachable (Redis down, SQLite locked or broken)."""


@dataclass(frozen=True, slots=True)
class ShadowDay:
    """One model's shadow spend on one UTC day, in nano-dollars."""

    spent_nano: int
    held_nano: int


def utc_day(at: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if at is None else at))


class SharedSelfCalStore(Protocol):
    # --- gateway.core.selfcal.SelfCalibrationStore ----------------------------------------------
    async def add_label(self, label: Label) -> int: ...

    async def labels(self, model: str, tier: int, limit: int) -> Sequence[Label]: ...

    async def get_state(self, model: str, tier: int) -> CalibrationState | None: ...

    async def put_state(self, state: CalibrationState) -> bool: ...

    # --- the service's side ---------------------------------------------------------------------
    async def cascades(self) -> list[tuple[str, int]]:
        """Every (model, tier) that has labels or a state, sorted."""
        ...

    async def label_count(self, model: str, tier: int) -> int:
        """Labels ever added (the list keeps the newest ``max_labels``)."""
        ...

    async def drift_alarms(self, model: str, tier: int) -> int: ...

    async def hold(self, model: str, day: str, hold_id: str, nano: int, budget_nano: int) -> bool:
        """Add ``nano`` to hold ``hold_id`` if the day's spend plus every open hold still fits the
        budget; False (nothing changed) when it would not."""
        ...

    async def settle(self, model: str, day: str, hold_id: str, cost_nano: int) -> None:
        """Close hold ``hold_id`` and add the job's real cost to the day's spend."""
        ...

    async def shadow_day(self, model: str, day: str) -> ShadowDay: ...

    async def close(self) -> None: ...


def build_selfcal_store(
    redis_url: str | None, data_dir: Path, *, redis_prefix: str = "slmgw:", max_labels: int = DEFAULT_MAX_LABELS,
    hold_ttl_s: float = DEFAULT_HOLD_TTL_S, redis_pool: RedisPoolSettings | None = None,
) -> SharedSelfCalStore:
    """Redis when ``redis_url`` is set (every replica shares it), else ``<data_dir>/selfcal.sqlite3``."""
    if redis_url:
        from gateway.accounting.selfcal_redis import RedisSelfCalStore

        return RedisSelfCalStore(redis_url, prefix=redis_prefix, max_labels=max_labels, hold_ttl_s=hold_ttl_s,
                                 pool=redis_pool)
    from gateway.accounting.selfcal_sqlite import SQLiteSelfCalStore

    return SQLiteSelfCalStore(data_dir / "selfcal.sqlite3", max_labels=max_labels, hold_ttl_s=hold_ttl_s)
