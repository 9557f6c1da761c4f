"""The split of a command across units: tables of inputs -> targets, levels, shortfall, and
properties (sums, ranges, availability, levels, SoC balancing, tree = flat split)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cloud.dispatch.allocation import Allocation, allocate, water_fill

INF = math.inf


def alloc(command: float, units: list[tuple], horizon_s: float = 900.0) -> Allocation:
    """Units as rows (baseline, p_min, p_max, e_absorb, e_deliver, available)."""
    cols = list(zip(*units, strict=True))
    return allocate(
        command,
        *(np.array(c, dtype=float) for c in cols[:5]),
        np.array(cols[5], dtype=bool),
        horizon_s,
    )


# Three units with plenty of energy: split in proportion to headroom, all at the same level.
PLENTY = [
    (0, -1000, 1000, INF, INF, True),
    (0, -2000, 2000, INF, INF, True),
    (0, -1000, 1000, INF, INF, True),
]
# Energy-limited upwards over 15 min: e * 4 = 4000, 400, 0 W -> weights 1000, 400, 0.
LIMITED = [
    (0, -1000, 1000, 1000, 50, True),
    (0, -2000, 2000, 100, 500, True),
    (0, -1000, 1000, 0, 250, True),
]

# (command, units) -> (targets, levels, shortfall)
TABLE = [
    (2000, PLENTY, [500, 1000, 500], [0.5, 0.5, 0.5], 0),
    (-3000, PLENTY, [-750, -1500, -750], [-0.75, -0.75, -0.75], 0),
    (0, PLENTY, [0, 0, 0], [0, 0, 0], 0),
    (4000, PLENTY, [1000, 2000, 1000], [1, 1, 1], 0),
    (5000, PLENTY, [1000, 2000, 1000], [1, 1, 1], 1000),
    (-4500, PLENTY, [-1000, -2000, -1000], [-1, -1, -1], -500),
    # proportional to weights 1000:400:0 (factor 0.5)
    (700, LIMITED, [500, 200, 0], [0.5, 0.1, 0], 0),
    # unit 0 caps at 1000; the rest (1000) goes to unit 1 (weight 400, cap 2000)
    (2000, LIMITED, [1000, 1000, 0], [1, 0.5, 0], 0),
    # weighted units full (3000); unit 2 (no energy) takes the last 500 by headroom
    (3500, LIMITED, [1000, 2000, 500], [1, 1, 0.5], 0),
    # downwards: deliver energies 50, 500, 250 Wh -> weights 200, 2000, 1000 (capped by range)
    (-640, LIMITED, [-40, -400, -200], [-0.04, -0.2, -0.2], 0),
    # a unit unavailable: held at its baseline, the others take the whole command
    (
        900,
        [
            (100, -1000, 1000, INF, INF, False),
            (0, -500, 500, INF, INF, True),
            (0, -1000, 1000, INF, INF, True),
        ],
        [100, 300, 600],
        [0, 0.6, 0.6],
        0,
    ),
    # baselines not zero: the delta from the available baselines is split
    (
        1500,
        [(1000, 0, 2000, INF, INF, True), (-500, -1000, 1000, INF, INF, True)],
        [1400, 100],
        [0.4, 0.4],
        0,
    ),
    # a baseline outside its range counts from the nearest bound (2000); the level is what
    # the edge applies against its own baseline: 3000 - 5/9 * (3000 - 0) = 1333
    (
        1000,
        [(3000, 0, 2000, INF, INF, True), (0, -1000, 1000, INF, INF, True)],
        [4000 / 3, -1000 / 3],
        [-5 / 9, -1 / 3],
        0,
    ),
    # bad data (inverted range, NaN) counts as unavailable
    (
        500,
        [
            (0, 10, -10, INF, INF, True),
            (0, -1000, 1000, INF, INF, True),
            (math.nan, -1, 1, INF, INF, True),
        ],
        [0, 500, math.nan],
        [0, 0.5, 0],
        0,
    ),
    # nothing available: everything is shortfall
    (800, [(0, -1000, 1000, INF, INF, False)], [0], [0], 800),
]


@pytest.mark.parametrize(("command", "units", "targets", "levels", "shortfall"), TABLE)
def test_table(
    command: float,
    units: list[tuple],
    targets: list[float],
    levels: list[float],
    shortfall: float,
) -> None:
    a = alloc(command, units)
    np.testing.assert_allclose(a.targets_w, targets, atol=1e-6)
    np.testing.assert_allclose(a.levels, levels, atol=1e-9)
    assert a.shortfall_w == pytest.approx(shortfall, abs=1e-9)
    assert a.achieved_w == pytest.approx(command - shortfall, abs=1e-6)


# The "headroom" strategy (flag dispatch.allocation), per unit: command, units, which units
# split by headroom -> targets, levels, shortfall. The energy rows above hold for "energy".
ALL, NONE = [True] * 3, [False] * 3
HEADROOM = [
    # energy ignored: every unit at the same level, also the one with no energy left
    (700, LIMITED, ALL, [175, 350, 175], [0.175, 0.175, 0.175], 0),
    (700, LIMITED, NONE, [500, 200, 0], [0.5, 0.1, 0], 0),  # "energy", as above
    (-640, LIMITED, ALL, [-160, -320, -160], [-0.16, -0.16, -0.16], 0),
    # per partition: the third by headroom (weight 1000), the others by energy (1000, 400)
    (700, LIMITED, [False, False, True], [875 / 3, 350 / 3, 875 / 3], [0.2917, 0.0583, 0.2917], 0),
    # with plenty of energy both strategies agree
    (2000, PLENTY, ALL, [500, 1000, 500], [0.5, 0.5, 0.5], 0),
    # beyond the ranges: every unit at its bound, the rest is shortfall, as with energy
    (5000, LIMITED, ALL, [1000, 2000, 1000], [1, 1, 1], 1000),
    # an unavailable unit stays at its baseline whatever its strategy
    (
        900,
        [
            (100, -1000, 1000, INF, INF, False),
            (0, -500, 500, 0, 0, True),
            (0, -1000, 1000, 0, 0, True),
        ],
        ALL,
        [100, 300, 600],
        [0, 0.6, 0.6],
        0,
    ),
]


@pytest.mark.parametrize(
    ("command", "units", "by_headroom", "targets", "levels", "shortfall"), HEADROOM
)
def test_headroom_strategy(
    command: float,
    units: list[tuple],
    by_headroom: list[bool],
    targets: list[float],
    levels: list[float],
    shortfall: float,
) -> None:
    cols = list(zip(*units, strict=True))
    a = allocate(
        command,
        *(np.array(c, dtype=float) for c in cols[:5]),
        np.array(cols[5], dtype=bool),
        900.0,
        by_headroom=by_headroom,
    )
    np.testing.assert_allclose(a.targets_w, targets, atol=1e-6)
    np.testing.assert_allclose(a.levels, levels, atol=1e-4)
    assert a.shortfall_w == pytest.approx(shortfall, abs=1e-9)


def test_empty_and_bad_arguments() -> None:
    empty = np.zeros(0)
    a = allocate(100.0, empty, empty, empty, empty, empty, np.zeros(0, dtype=bool))
    assert (a.targets_w.size, a.achieved_w, a.shortfall_w) == (0, 0.0, 100.0)
    one = np.zeros(1)
    with pytest.raises(ValueError, match="same length"):
        allocate(0.0, one, np.zeros(2), one, one, one, np.ones(1, dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        allocate(math.nan, one, one, one, one, one, np.ones(1, dtype=bool))
    with pytest.raises(ValueError, match="horizon"):
        allocate(0.0, one, one, one, one, one, np.ones(1, dtype=bool), horizon_s=0)


# --- properties ---------------------------------------------------------------------------


@st.composite
def fleets(draw: st.DrawFn, max_units: int = 60) -> dict[str, np.ndarray]:
    n = draw(st.integers(1, max_units))
    power = hnp.arrays(np.float64, n, elements=st.floats(-1e4, 1e4))
    base = draw(power)
    down = draw(hnp.arrays(np.float64, n, elements=st.floats(0, 1e4)))
    up = draw(hnp.arrays(np.float64, n, elements=st.floats(0, 1e4)))
    energy = st.one_of(st.floats(0, 5e4), st.just(math.inf))
    return {
        "baseline": base,
        "p_min": base - down,
        "p_max": base + up,
        "e_absorb": draw(hnp.arrays(np.float64, n, elements=energy)),
        "e_deliver": draw(hnp.arrays(np.float64, n, elements=energy)),
        "available": draw(hnp.arrays(np.bool_, n)),
    }


@settings(max_examples=300, deadline=None)
@given(fleet=fleets(), where=st.floats(-1.3, 1.3))
def test_allocation_properties(fleet: dict[str, np.ndarray], where: float) -> None:
    avail = fleet["available"]
    lo_sum = float(fleet["p_min"][avail].sum())
    hi_sum = float(fleet["p_max"][avail].sum())
    base_sum = float(fleet["baseline"][avail].sum())
    # commands from below the range to above it, through the baseline
    command = base_sum + where * ((hi_sum - base_sum) if where > 0 else (base_sum - lo_sum))
    a = allocate(command, **fleet)
    t, lv = a.targets_w, a.levels
    # every target inside its range; unavailable units at baseline, level 0
    assert np.all(t[avail] >= fleet["p_min"][avail] - 1e-6)
    assert np.all(t[avail] <= fleet["p_max"][avail] + 1e-6)
    np.testing.assert_array_equal(t[~avail], fleet["baseline"][~avail])
    assert np.all(lv[~avail] == 0.0)
    # levels in [-1, 1] and consistent with the targets (what an edge applies)
    assert np.all((lv >= -1.0) & (lv <= 1.0))
    b = fleet["baseline"]
    applied = np.where(lv >= 0, b + lv * (fleet["p_max"] - b), b + lv * (b - fleet["p_min"]))
    np.testing.assert_allclose(applied[avail], t[avail], atol=1e-6)
    # the sum meets the command when feasible; the shortfall is exactly the infeasible part
    expected_shortfall = command - min(max(command, lo_sum), hi_sum)
    assert a.shortfall_w == pytest.approx(expected_shortfall, abs=1e-6)
    assert a.achieved_w == pytest.approx(command - a.shortfall_w, abs=1.0)
    if lo_sum <= command <= hi_sum:
        assert a.shortfall_w == 0.0
        assert abs(float(t[avail].sum()) - command) <= 1.0


def brute_fill(amount: float, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Reference water-filling: bisection on the common factor."""
    pos = weights > 0
    if amount >= caps[pos].sum():
        x = np.where(pos, caps, 0.0)
        rest = amount - caps[pos].sum()
        spare = ~pos & (caps > 0)
        if spare.any():
            x[spare] = caps[spare] * min(1.0, rest / caps[spare].sum())
        return x
    lo, hi = 0.0, 1.0
    while np.minimum(caps, hi * weights).sum() < amount:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(caps, mid * weights).sum() < amount else (lo, mid)
    return np.minimum(caps, hi * weights)


@settings(max_examples=300, deadline=None)
@given(
    caps=hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 1e4)),
    data=st.data(),
    share=st.floats(0, 1.2),
)
def test_water_fill_matches_bisection(caps: np.ndarray, data: st.DataObject, share: float) -> None:
    weight = st.one_of(st.just(0.0), st.floats(1e-3, 1e4))
    weights = data.draw(hnp.arrays(np.float64, caps.size, elements=weight))
    amount = share * float(caps.sum())
    x = water_fill(amount, caps, weights)
    assert np.all(x >= 0)
    assert np.all(x <= caps + 1e-9)
    assert float(x.sum()) == pytest.approx(min(amount, float(caps.sum())), abs=1e-6)
    np.testing.assert_allclose(x, brute_fill(amount, caps, weights), atol=1e-3)


# --- SoC balancing --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    energies=hnp.arrays(np.float64, st.integers(2, 30), elements=st.floats(0, 1e4)),
    share=st.floats(0.01, 0.99),
    up=st.booleans(),
)
def test_more_energy_left_gets_a_larger_share(energies: np.ndarray, share: float, up: bool) -> None:
    """Same range, different energy: shares are ordered like the energies left."""
    n = energies.size
    base, p_min, p_max = np.zeros(n), np.full(n, -5000.0), np.full(n, 5000.0)
    command = share * 5000.0 * n * (1 if up else -1)
    a = allocate(command, base, p_min, p_max, energies, energies, np.ones(n, dtype=bool))
    order = np.argsort(energies, kind="stable")
    moved = np.abs(a.targets_w[order])
    assert np.all(np.diff(moved) >= -1e-6)


def test_energy_limited_units_run_out_together() -> None:
    """Units that cannot hold their range for the horizon get power in proportion to energy:
    equal time-to-empty, so their energies (and SoCs) converge instead of drifting apart."""
    n = 4
    energy = np.array([200.0, 400.0, 800.0, 20_000.0])  # Wh to deliver
    base, p_min, p_max = np.zeros(n), np.full(n, -5000.0), np.full(n, 5000.0)
    a = allocate(-3000.0, base, p_min, p_max, energy, energy, np.ones(n, dtype=bool))
    limited = slice(0, 3)
    hours_left = energy[limited] / -a.targets_w[limited]
    np.testing.assert_allclose(hours_left, hours_left[0])
    assert -a.targets_w[3] > -a.targets_w[2]  # the big battery works hardest


def test_soc_gap_shrinks_over_a_simulated_hour() -> None:
    """An hour delivering 30 % of the range: the energy-weighted split narrows the spread of
    stored energy in proportion to the energy used; a split by range alone keeps it."""
    rng = np.random.default_rng(7)
    n, cap_wh = 200, 10_000.0
    soc0 = rng.uniform(0.2, 0.9, n) * cap_wh  # stored energy
    base, p_min, p_max = np.zeros(n), np.full(n, -5000.0), np.full(n, 5000.0)
    ones = np.ones(n, dtype=bool)

    def hour(horizon_s: float) -> np.ndarray:
        soc = soc0.copy()
        for _ in range(30):  # two minutes each
            a = allocate(
                -0.3 * 5000.0 * n, base, p_min, p_max, cap_wh - soc, soc, ones, horizon_s=horizon_s
            )
            assert a.shortfall_w == 0.0
            soc = soc + a.targets_w * (120.0 / 3600.0)  # grid power down = battery discharges
        return soc

    used = 0.3 * 5000.0 * n / soc0.sum()  # share of the stored energy delivered in the hour
    balanced = hour(14_400.0)
    assert np.ptp(balanced) <= (1.0 - 0.9 * used) * np.ptp(soc0)
    by_range = hour(1.0)  # every battery "has energy to spare": equal levels
    assert np.ptp(by_range) == pytest.approx(np.ptp(soc0))


def test_units_dropping_out_are_replaced_at_once() -> None:
    """20 % of units go unavailable; the same command is met by the rest in the same cycle."""
    rng = np.random.default_rng(3)
    n = 1000
    base = rng.uniform(-2000, 2000, n)
    p_min, p_max = base - rng.uniform(500, 4000, n), base + rng.uniform(500, 4000, n)
    e_abs, e_del = rng.uniform(100, 8000, n), rng.uniform(100, 8000, n)
    avail = np.ones(n, dtype=bool)
    command = float(base.sum()) - 0.4 * float((base - p_min).sum())
    before = allocate(command, base, p_min, p_max, e_abs, e_del, avail)
    assert before.shortfall_w == 0.0
    gone = rng.choice(n, n // 5, replace=False)
    avail[gone] = False
    after = allocate(command, base, p_min, p_max, e_abs, e_del, avail)
    assert after.shortfall_w == 0.0
    assert abs(after.achieved_w - command) <= 1.0
    np.testing.assert_array_equal(after.targets_w[gone], base[gone])
    # the others each move further in the command's direction (they take the share)
    assert np.all(after.levels[avail] <= before.levels[avail] + 1e-12)
    assert np.all(after.levels[avail] >= -1.0)


# --- two levels ----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(fleet=fleets(max_units=80), parts=st.integers(1, 8), share=st.floats(-0.9, 0.9))
def test_two_level_split_equals_the_flat_split(
    fleet: dict[str, np.ndarray], parts: int, share: float
) -> None:
    """Partitions get the summed bounds and sustainable powers of their sites; the dispatcher
    splits across partitions, each worker across its sites. Where nothing caps (the usual
    case) every site gets what one flat split over all sites would give it; always, the
    site targets sum to the command and stay in range."""
    n = fleet["baseline"].size
    fleet["available"] = np.ones(n, dtype=bool)
    part = np.arange(n) % parts
    b, lo, hi = fleet["baseline"], fleet["p_min"], fleet["p_max"]
    command = float(b.sum()) + share * float(((hi - b) if share > 0 else (b - lo)).sum())
    flat = allocate(command, **fleet)

    w_up = np.minimum(hi - b, fleet["e_absorb"] / 4.0)  # the aggregates' sustain_*_w[2] (4 h)
    w_dn = np.minimum(b - lo, fleet["e_deliver"] / 4.0)
    sums = {
        k: np.bincount(part, weights=v, minlength=parts)
        for k, v in (("b", b), ("lo", lo), ("hi", hi), ("wu", w_up), ("wd", w_dn))
    }
    zeros, ones = np.zeros(parts), np.ones(parts, dtype=bool)
    top = allocate(
        command,
        sums["b"],
        sums["lo"],
        sums["hi"],
        zeros,
        zeros,
        ones,
        weights_up=sums["wu"],
        weights_down=sums["wd"],
    )
    targets = np.empty(n)
    for p in range(parts):
        m = part == p
        sub = allocate(
            top.targets_w[p],
            b[m],
            lo[m],
            hi[m],
            fleet["e_absorb"][m],
            fleet["e_deliver"][m],
            np.ones(int(m.sum()), dtype=bool),
        )
        assert sub.shortfall_w == pytest.approx(0.0, abs=1e-6)
        targets[m] = sub.targets_w
    assert abs(float(targets.sum()) - command) <= 1.0
    assert np.all((targets >= lo - 1e-6) & (targets <= hi + 1e-6))
    # nothing capped in the flat split: the tree gives the same per site
    capped = np.isclose(np.abs(flat.levels), 1.0) & (np.abs(flat.levels) > 0)
    if not capped.any():
        np.testing.assert_allclose(targets, flat.targets_w, atol=1e-3)
