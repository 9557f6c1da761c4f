"""WriteGuard as tables: per cycle (time, target, outcome of a write) -> the decision."""

from __future__ import annotations

import pytest

from edge.drivers import Decision, WriteGuard

W, R, S, L = Decision.WRITE, Decision.REFRESH, Decision.SKIP, Decision.RATE_LIMITED

# (t, target, expected decision); a WRITE/REFRESH is followed by a successful write
CASES = {
    "first write, then deadband": [
        (0.0, 1000.0, W),
        (1.0, 1030.0, S),
        (2.0, 970.0, S),
        (3.0, 1051.0, W),
    ],
    "rate limit: one write per second": [
        (0.0, 1000.0, W),
        (0.5, 2000.0, L),
        (0.99, 2000.0, L),
        (1.0, 2000.0, W),
    ],
    "refresh an unchanged value every revert/3": [
        (0.0, 1000.0, W),
        (10.0, 1000.0, S),
        (19.9, 1000.0, S),
        (20.0, 1000.0, R),
        (21.0, 1000.0, S),
        (40.0, 1010.0, R),
    ],
    "release and re-command; a release is not refreshed": [
        (0.0, 500.0, W),
        (1.0, None, W),
        (2.0, None, S),
        (100.0, None, S),
        (101.0, 0.0, W),
    ],
    "the very first command writes, even a release": [
        (0.0, None, W),
        (0.2, None, S),
    ],
    "rate limit also holds a due refresh": [
        (0.0, 1000.0, W),
        (19.5, 1100.0, W),
        (20.0, 1100.0, S),
        (39.5, 1100.0, R),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_write_guard_table(name: str):
    g = WriteGuard(deadband=50.0, min_interval_s=1.0, refresh_s=20.0)
    for t, target, expected in CASES[name]:
        got = g.decide(target, t)
        assert got is expected, f"{name}: t={t} target={target}: {got} != {expected}"
        if got in (W, R):
            g.attempted(t)
            g.succeeded(target, t)


def test_failed_write_is_rate_limited_and_retried():
    g = WriteGuard(deadband=50.0, min_interval_s=1.0, refresh_s=20.0)
    g.attempted(0.0)  # sent, but it failed: nothing recorded as written
    assert g.decide(1000.0, 0.5) is L
    assert g.decide(1000.0, 1.0) is W
    assert not g.has_written


def test_invalidate_forces_a_write_within_the_deadband():
    g = WriteGuard(deadband=50.0, min_interval_s=1.0, refresh_s=20.0)
    g.attempted(0.0)
    g.succeeded(1000.0, 0.0)
    assert g.decide(1000.0, 5.0) is S
    g.invalidate()  # the device lost our setpoint (reboot)
    assert g.decide(1000.0, 5.0) is W


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_target_is_refused(bad: float):
    g = WriteGuard(deadband=50.0, min_interval_s=1.0, refresh_s=20.0)
    with pytest.raises(ValueError, match="finite"):
        g.decide(bad, 0.0)
