"""The one interval-energy integral (protocols.energy): samples -> energy, as a table."""

from __future__ import annotations

import math

import pytest

from protocols.energy import held_energy

H = 3600.0

# (ts, power W, start, end, max hold s) -> (Wh, covered s)
CASES = [
    ("one sample holds to the end", [0], [3600], 0, H, math.inf, (3600.0, H)),
    ("each holds until the next", [0, 1800], [1000, 3000], 0, H, math.inf, (2000.0, H)),
    (
        "a sample before start counts from start",
        [-600, 1800],
        [1000, 3000],
        0,
        H,
        math.inf,
        (2000.0, H),
    ),
    ("samples after end count nothing", [0, H, H + 10], [360, 99, 99], 0, H, math.inf, (360.0, H)),
    (
        "a gap longer than the hold is not measured",
        [0, 1800],
        [3600, 3600],
        0,
        H,
        2.0,
        (4 / 3600 * 3600, 4.0),
    ),
    ("NaN is not measured", [0, 1800], [math.nan, 7200], 0, H, math.inf, (3600.0, 1800.0)),
    ("before the first sample nothing is known", [1800], [7200], 0, H, math.inf, (3600.0, 1800.0)),
    ("no samples", [], [], 0, H, math.inf, (0.0, 0.0)),
    ("an empty span", [0], [100], H, H, math.inf, (0.0, 0.0)),
    ("negative power is energy out", [0, 900], [-400, 400], 0, 1800, math.inf, (0.0, 1800.0)),
]


@pytest.mark.parametrize(
    ("what", "ts", "power", "start", "end", "hold", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_held_energy(what, ts, power, start, end, hold, expected):
    got = held_energy(ts, power, start, end, max_hold_s=hold)
    assert (got.wh, got.covered_s) == pytest.approx(expected), what


def test_scaled_to_the_span_is_the_mean_power_over_it():
    got = held_energy([0, 1, 2], [10.0, 20.0, 30.0], 0, 4, max_hold_s=1.0)  # 3 s of 4 known
    assert got.covered_s == 3.0
    assert got.scaled_to(4.0) == pytest.approx(20.0 * 4 / 3600)
    assert held_energy([], [], 0, 4).scaled_to(4.0) == 0.0


@pytest.mark.parametrize(
    ("ts", "power"), [([1, 0], [1, 1]), ([0, 1], [1]), ([[0]], [[1]])], ids=str
)
def test_samples_that_cannot_be_integrated_are_refused(ts, power):
    with pytest.raises(ValueError, match="must be"):
        held_energy(ts, power, 0, 10)
