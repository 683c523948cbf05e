"""Process settings of the self-calibrating cascade's service parts (docs/cascade.md, issue 22).

| variable | default | what |
|---|---|---|
| ``SLM_GATEWAY_SELFCAL`` | on | ``off``: strategies get no shadow runner and no self-calibration store |
| ``SLM_GATEWAY_SELFCAL_MAX_LABELS`` | 10000 | labels kept per cascade tier (the newest) |
| ``SLM_GATEWAY_SHADOW_HOLD_TTL_S`` | 10800 | a crashed replica's shadow budget hold is released after this |

The store is Redis when ``REDIS_URL`` is set, else ``<data dir>/selfcal.sqlite3``. Read once at
start-up (``from_env``) like :class:`gateway.settings.GatewaySettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.reliability.settings import _flag, _number

DEFAULT_MAX_LABELS = 10_000
# A shadow call on a busy CPU box can take many minutes (the shipped policies allow 30): a hold
# must outlive it, or its reservation is freed while the job still spends.
DEFAULT_HOLD_TTL_S = 3 * 3600.0


@dataclass(frozen=True, slots=True)
class SelfCalSettings:
    enabled: bool = True
    max_labels: int = DEFAULT_MAX_LABELS
    hold_ttl_s: float = DEFAULT_HOLD_TTL_S

    @classmethod
    def from_env(cls) -> SelfCalSettings:
        return cls(
            enabled=_flag("SLM_GATEWAY_SELFCAL", True),
            max_labels=_number("SLM_GATEWAY_SELFCAL_MAX_LABELS", DEFAULT_MAX_LABELS, int),
            hold_ttl_s=_number("SLM_GATEWAY_SHADOW_HOLD_TTL_S", DEFAULT_HOLD_TTL_S, float),
        )
