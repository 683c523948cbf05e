"""Usage-query windows: every form a client may send parses, and anything that is not a point in
time is a 400 (the OpenAPI fuzzer found ``since=NaN`` answered with a 500)."""

from __future__ import annotations

import pytest

from gateway.accounting.window import minute_window
from gateway.core.errors import InvalidRequestError

NOW = 1_764_590_400.0  # 2025-12-01T12:00:00Z


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, (int((NOW - 3600) // 60), int(NOW // 60))),
        ("30m", "now", (int((NOW - 1800) // 60), int(NOW // 60))),
        ("2025-12-01T11:00:00Z", str(NOW), (int((NOW - 3600) // 60), int(NOW // 60))),
        (NOW - 120, NOW, (int((NOW - 120) // 60), int(NOW // 60))),
    ],
)
def test_window_forms(since: str | float | None, until: str | float | None, expected: tuple[int, int]) -> None:
    assert minute_window(since, until, now=NOW) == expected


@pytest.mark.parametrize("bad", ["NaN", "nan", "inf", "-Infinity", "1e400", "99999999999999999999w", float("nan")])
def test_values_that_are_not_times_are_client_errors(bad: str | float) -> None:
    for since, until in ((bad, None), (None, bad), (bad, bad)):
        with pytest.raises(InvalidRequestError) as caught:
            minute_window(since, until, now=NOW)
        assert caught.value.param in {"since", "until"}


def test_since_after_until_is_a_client_error() -> None:
    with pytest.raises(InvalidRequestError):
        minute_window("now", "1h", now=NOW)
