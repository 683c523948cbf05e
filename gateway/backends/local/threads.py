"""How many threads an in-process model runs on (``SLM_GATEWAY_THREADS``, docs/engines.md).

More threads than the cores a process really gets make decode *slower*, not faster: a
spinning thread waits for a core held by another (measured up to 20x slower with 2
threads on a busy 2-core box). So the default is the cores the process may use — its CPU
affinity, capped by a cgroup CPU quota — and, when that is more than one, a short
measurement at start-up keeps whichever of 1 thread or all of them decodes faster.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: affinity mask ∩ the cgroup ``cpu.max`` quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` ("max 100000" = unlimited), or v1 cfs files."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def choose_threads(
    name: str, configured: int | None, measure: Callable[[int], float], cores: int | None = None
) -> int:
    """The configured count, else the faster of 1 and ``cores`` by ``measure`` (seconds per step)."""
    if configured is not None:
        logger.info("backend %s: %d thread(s) (configured)", name, configured)
        return configured
    cores = cores if cores is not None else available_cores()
    if cores == 1:
        logger.info("backend %s: 1 thread (1 core available)", name)
        return 1
    measure(1)  # warm-up: first steps pay page faults and allocations
    one, many = measure(1), measure(cores)
    chosen = 1 if one <= many else cores
    logger.info("backend %s: %d thread(s) — decode step %.1f ms at 1 thread, %.1f ms at %d (%d cores available)",
                name, chosen, one * 1e3, many * 1e3, cores, cores)
    return chosen
