"""The dispatcher's account of a schedule interval, per cycle: (time, target, measured,
baseline) -> target, delivered and asked-deviation Wh so far (protocols.energy underneath).
Each cycle's values stand for the time since the cycle before; the first since the start."""

from __future__ import annotations

import pytest

from cloud.dispatch.dispatcher import _Interval

START, END, CYCLE = 0.0, 900.0, 2.0

# cycles (t, target W, measured W, baseline W), account until -> Wh (target, delivered,
# deviation asked); 3600 W for a second is 1 Wh
CASES = [
    (
        "steady cycles",
        [(1.0, 3600.0, 3600.0, 0.0), (3.0, 3600.0, 1800.0, 0.0), (5.0, 3600.0, 1800.0, 0.0)],
        5.0,
        (5.0, 1.0 + 2 * 1.0, 5.0),
    ),
    (
        "a gap of ten seconds: target and delivered count two cycles of it, the deviation all",
        [(2.0, 3600.0, 3600.0, 1800.0), (12.0, 3600.0, 3600.0, 1800.0)],
        12.0,
        (2.0 + 4.0, 2.0 + 4.0, (2.0 + 10.0) / 2),
    ),
    (
        "a take-over mid-interval: the deviation asked counts from the start",
        [(300.0, 3600.0, 0.0, 0.0), (302.0, 3600.0, 0.0, 0.0)],
        302.0,
        (4.0 + 2.0, 0.0, 302.0),
    ),
    (
        "at the close the last cycle holds to the end, for two cycles at most",
        [(896.0, 3600.0, 3600.0, 0.0), (898.0, 3600.0, 3600.0, 0.0)],
        END,
        (4.0 + 4.0, 4.0 + 4.0, 900.0),
    ),
]


@pytest.mark.parametrize(("what", "cycles", "until", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_interval_account(what, cycles, until, expected):
    interval = _Interval("s1", START, END)
    for t, target, measured, baseline in cycles:
        interval.add(t, target, measured, baseline)
    target_wh, delivered_wh, deviation_wh = interval.energies(until, CYCLE)
    assert (target_wh, delivered_wh, deviation_wh) == pytest.approx(expected), what
