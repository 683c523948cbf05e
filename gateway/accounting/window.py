"""Time windows for usage queries: ISO times, epoch seconds, or relative spans like ``1h``."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from gateway.core.errors import InvalidRequestError

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
DEFAULT_SPAN_S = 3600.0


def parse_time(value: str | float | datetime | None, *, now: float, param: str) -> float | None:
    """Epoch seconds for ``value``: a relative span counts back from ``now``."""
    moment = _parse(value, now=now, param=param)
    # float() accepts "nan" and "inf", and a span can overflow: neither is a point in time.
    if moment is not None and not (math.isfinite(moment) and abs(moment) < _MAX_EPOCH_S):
        raise InvalidRequestError(f"{param} is not a time the gateway can query: {value!r}", param=param)
    return moment


_MAX_EPOCH_S = 253_402_300_800.0  # 10000-01-01: beyond any record, and inside what int() and datetime take


def _parse(value: str | float | datetime | None, *, now: float, param: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _aware(value).timestamp()
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if text.lower() == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _aware(datetime.fromisoformat(text.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        raise InvalidRequestError(
            f"{param} must be an ISO 8601 time, epoch seconds, or a span like 30m, 1h, 7d; got {value!r}",
            param=param,
        ) from None


def minute_window(
    since: str | float | datetime | None, until: str | float | datetime | None, *, now: float | None = None
) -> tuple[int, int]:
    """Whole minutes ``[first, last]`` (epoch // 60) covering the window; default: the last hour.

    Aggregates are kept per minute, so the minutes containing ``since`` and ``until`` are
    included whole (both stores answer the same way).
    """
    now = time.time() if now is None else now
    end = parse_time(until, now=now, param="until")
    end = now if end is None else end
    start = parse_time(since, now=now, param="since")
    start = end - DEFAULT_SPAN_S if start is None else start
    if start > end:
        raise InvalidRequestError("since must not be after until", param="since")
    return int(start // 60), int(end // 60)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
