"""Process settings: where the policy is, where state goes, how to reach Redis.

Read from the environment once, at start-up (``GatewaySettings.from_env``), and passed
down explicitly; nothing reads the environment on the request path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.accounting.selfcal_settings import SelfCalSettings
from gateway.reliability.settings import ReliabilitySettings

logger = logging.getLogger(__name__)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "slm-gateway"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    policy_path: Path | None = None
    redis_url: str | None = None
    data_dir: Path = field(default_factory=_default_data_dir)
    admin_key: str | None = None
    drain_seconds: float = 20.0
    # Threads of in-process models, both engines (SLM_GATEWAY_THREADS; a backend's own ``threads:``
    # wins). None: the cores the process really gets (affinity ∩ cgroup quota), and when that is
    # more than one, whichever of 1 or all decodes faster at start-up — oversubscribed threads spin
    # and stall (measured up to 20x slower on a busy 2-core box). See docs/engines.md.
    threads: int | None = None
    # Connection pools, header limits, the journal, /metrics and /docs access (gateway/reliability/settings.py).
    reliability: ReliabilitySettings = field(default_factory=ReliabilitySettings)
    # Shadow jobs and the shared self-calibration store (gateway/accounting/selfcal_settings.py).
    selfcal: SelfCalSettings = field(default_factory=SelfCalSettings)

    @classmethod
    def from_env(cls, policy_path: str | Path | None = None) -> GatewaySettings:
        policy = policy_path or os.environ.get("SLM_GATEWAY_POLICY") or None
        data_dir = os.environ.get("SLM_GATEWAY_DATA_DIR")
        return cls(
            policy_path=Path(policy) if policy else None,
            redis_url=os.environ.get("REDIS_URL") or None,
            data_dir=Path(data_dir) if data_dir else _default_data_dir(),
            admin_key=os.environ.get("SLM_GATEWAY_ADMIN_KEY") or None,
            drain_seconds=float(os.environ.get("SLM_GATEWAY_DRAIN_SECONDS", "20")),
            threads=_thread_setting(),
            reliability=ReliabilitySettings.from_env(),
            selfcal=SelfCalSettings.from_env(),
        )


def _thread_setting() -> int | None:
    threads = _positive_int("SLM_GATEWAY_THREADS")
    legacy = _positive_int("SLM_GATEWAY_TORCH_THREADS")
    if legacy is not None:
        logger.warning("SLM_GATEWAY_TORCH_THREADS is deprecated: use SLM_GATEWAY_THREADS (both engines)")
    return threads if threads is not None else legacy


def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)
