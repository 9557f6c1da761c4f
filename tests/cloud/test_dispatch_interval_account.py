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


# The delivered energy recorded at the end: the cycles' samples, with the deviation up to the
# sites' own account replaced by it (they integrate their meters; the cycles see held values,
# e.g. of sites sending by exception). cycles, sites' account (when, Wh), until -> Wh
STEADY = [(2.0, 3600.0, 1800.0, 0.0), (4.0, 3600.0, 1800.0, 0.0), (6.0, 3600.0, 1800.0, 0.0)]
DELIVERED = [
    ("no account from the sites: the cycles'", STEADY, None, 6.0, 3.0),
    # at 4 s the cycles saw 2 Wh of deviation, the sites metered 3 Wh
    ("the sites' account replaces the cycles' up to it", STEADY, (4.0, 3.0), 4.0, 3.0),
    ("the tail after it stays sampled", STEADY, (4.0, 3.0), 6.0, 4.0),
    # the baseline counts: 1800 W measured on a 900 W baseline is 1 Wh of deviation in 4 s
    (
        "deviation from the baseline",
        [(2.0, 3600.0, 1800.0, 900.0), (4.0, 3600.0, 1800.0, 900.0)],
        (4.0, 1.5),
        4.0,
        2.0 + 0.5,
    ),
    # the dispatcher missed the start (a take-over): the sites' account is not mixed in
    ("a gap in the cycles", [(300.0, 3600.0, 1800.0, 0.0)], (300.0, 100.0), 300.0, 2.0),
]


@pytest.mark.parametrize(
    ("what", "cycles", "sites", "until", "expected"), DELIVERED, ids=[c[0] for c in DELIVERED]
)
def test_the_delivered_energy_takes_the_sites_account(what, cycles, sites, until, expected):
    interval = _Interval("s1", START, END)
    for t, target, measured, baseline in cycles:
        interval.add(t, target, measured, baseline)
    interval.sites = sites
    assert interval.delivered_wh(until, CYCLE) == pytest.approx(expected), what
