"""The one backoff formula: first wait, doubled per failure in a row, capped; a failure count
below 1 (a caller's bug) refused with the reason."""

from __future__ import annotations

import pytest

from protocols.backoff import backoff_s


@pytest.mark.parametrize(
    ("failures", "first_s", "max_s", "expected"),
    [
        (1, 1.0, 60.0, 1.0),  # the first failure waits the first wait
        (2, 1.0, 60.0, 2.0),
        (4, 1.0, 60.0, 8.0),
        (7, 1.0, 60.0, 60.0),  # 64 s capped
        (5000, 1.0, 60.0, 60.0),  # no overflow after a long outage
        (3, 0.05, 2.0, 0.2),  # a Modbus link's connects
        (1, 5.0, 5.0, 5.0),  # a constant wait
        (3, 0.0, 2.0, 0.0),  # no wait at all (a test's link)
    ],
)
def test_the_wait_doubles_per_failure_up_to_the_cap(failures, first_s, max_s, expected) -> None:
    assert backoff_s(failures, first_s, max_s) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "message"),
    [(0, "backoff after 0 failures: count from 1"), (-3, "backoff after -3 failures")],
)
def test_a_count_below_one_is_refused(failures, message) -> None:
    with pytest.raises(ValueError, match=message):
        backoff_s(failures, 1.0, 60.0)
