"""Fixed log-spaced latency buckets: percentiles from counts, without keeping samples.

Both stores keep, per minute and group, how many requests fell into each bucket; p50/p95/p99
are read back from the summed counts. Bucket ``i >= 1`` covers ``[LOW * R**(i-1), LOW * R**i)``
with ``R = 2**(1/8)`` (about 9 % wide), bucket 0 covers ``[0, LOW)``; interpolating inside the
bucket keeps the error well under the bucket width. The bounds are fixed forever: changing
them would silently mix incompatible counts in stored data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

LOW_MS = 0.05
RATIO = 2 ** (1 / 8)
LAST_BUCKET = 200  # LOW * R**200 ≈ 1.6e6 ms: anything slower lands here
_LOG_RATIO = math.log(RATIO)


def bucket_of(value_ms: float) -> int:
    if value_ms < LOW_MS:
        return 0
    return min(LAST_BUCKET, int(math.log(value_ms / LOW_MS) / _LOG_RATIO) + 1)


def bucket_bounds(index: int) -> tuple[float, float]:
    if index <= 0:
        return 0.0, LOW_MS
    return LOW_MS * RATIO ** (index - 1), LOW_MS * RATIO**index


def percentile(counts: Mapping[int, int], quantile: float) -> float | None:
    """Nearest-rank percentile of the bucketed samples, geometric interpolation in the bucket."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(quantile * total))
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = bucket_bounds(index)
            fraction = (rank - seen - 0.5) / count
            value = low + (high - low) * fraction if index == 0 else low * (high / low) ** fraction
            return round(value, 3)
        seen += count
    return None  # unreachable: the loop always reaches the rank
