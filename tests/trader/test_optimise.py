"""The schedule LP and its fallback over the pool's envelope (storage groups plus a
power-only part): always inside it (less the margin), both counts of each group's stored
energy kept with its own efficiencies, each group neutral if asked, never worse than the
greedy schedule, fast, bounded in time, and all-zero rather than an error when there is
nothing to do. The last guard (``fit_to_flex``) leaves anything inside every group's
bounds."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpp.trader import optimise as optimise_mod
from vpp.trader.optimise import (
    FlexForecast,
    OptimiseOptions,
    ScheduleBoundsError,
    StoragePart,
    clip_to_flex,
    fit_to_flex,
    greedy_schedule,
    optimise_schedule,
    schedule_cost_eur,
    storage_levels,
)
from vpp.trader.prices import default_prices

SLOT_H = 0.25


def day_flex(n: int = 96) -> FlexForecast:
    """A 60 kW / 200 kWh-ish pool around a 10 kW baseline."""
    return FlexForecast.flat(
        n,
        baseline_w=10_000,
        absorb_w=50_000,
        deliver_w=60_000,
        e_absorb_wh=100_000,
        e_deliver_wh=120_000,
    )


def part(
    p_min: float,
    p_max: float,
    e_min: float,
    e_max: float,
    eta: tuple[float, float] = (0.95, 0.95),
) -> StoragePart:
    """A storage group with the same bounds in every slot."""
    return StoragePart(p_min, p_max, e_min, e_max, eta_charge=eta[0], eta_discharge=eta[1])


def shrunk(flex: FlexForecast, keep: float) -> FlexForecast:
    """The envelope a margin leaves (every bound of every part times ``keep``)."""
    parts = tuple(
        StoragePart(
            p.p_min_w * keep,
            p.p_max_w * keep,
            p.e_min_wh * keep,
            p.e_max_wh * keep,
            p.eta_charge,
            p.eta_discharge,
            p.e_low_0_wh,
            p.e_high_0_wh,
        )
        for p in flex.storage
    )
    return FlexForecast(
        flex.baseline_w, parts, flex.po_min_w * keep, flex.po_max_w * keep, flex.slot_s
    )


def assert_feasible(
    values: np.ndarray,
    storage: np.ndarray,
    flex: FlexForecast,
    opts: OptimiseOptions,
    tol: float = 1e-6,
) -> None:
    """Inside the shrunk envelope (power, both energy counts of every group), each group
    neutral if asked."""
    keep = 1.0 - opts.margin
    lo, hi = flex.delta_bounds()
    scale = max(1.0, float(np.abs(lo).max(initial=0)), float(hi.max(initial=0)))
    assert shrunk(flex, keep).violations(values, storage, tol=tol * scale) == []
    if opts.energy_neutral and len(flex):
        low, _ = flex.levels(storage)
        for g, p in enumerate(flex.storage):
            window = max(1.0, float(np.nan_to_num(np.abs(p.e_min_wh)).max()))
            assert low[g, -1] >= -opts.neutral_tol_wh - tol * window, f"group {g} not neutral"


def test_a_real_day_solves_fast_and_optimally() -> None:
    prices = default_prices(0)[0].values
    flex = day_flex()
    optimise_schedule(flex, prices)  # warm up imports and caches
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        result = optimise_schedule(flex, prices)
        times.append(time.perf_counter() - t0)
    assert (result.solver, result.status) == ("highs", "optimal")
    assert min(times) < 0.1, f"96 slots took {min(times) * 1000:.1f} ms"
    assert result.solve_s <= max(times)
    assert result.objective_eur < 0  # trading the day earns
    assert result.objective_eur == pytest.approx(schedule_cost_eur(result.values_w, prices, 900))
    assert_feasible(result.values_w, result.storage_w, flex, OptimiseOptions())
    assert result.storage_w.shape == result.energy_wh.shape == (1, 96)
    np.testing.assert_array_equal(result.storage_total_w, result.values_w)  # no power-only
    np.testing.assert_allclose(result.energy_wh, flex.levels(result.storage_w)[0], atol=1e-6)
    # Charging happens in cheaper slots than discharging.
    charge, discharge = result.values_w > 0, result.values_w < 0
    assert prices[charge].mean() < prices[discharge].mean()
    greedy = greedy_schedule(flex, prices)
    assert result.objective_eur <= schedule_cost_eur(greedy.sum(axis=0), prices, 900) + 1e-9


def test_losses_are_paid_for_by_the_round_trip() -> None:
    """Energy neutral in the floor's count: what is sold is what was stored, less losses."""
    flex = FlexForecast.flat(4, absorb_w=1000, deliver_w=1000, e_absorb_wh=1000, e_deliver_wh=1000)
    opts = OptimiseOptions(margin=0.0)
    result = optimise_schedule(flex, np.array([10.0, 10.0, 200.0, 200.0]), opts)
    d = result.values_w
    np.testing.assert_allclose(d[:2], [1000.0, 1000.0])  # 475 Wh stored (floor count)
    assert -d[2:].sum() == pytest.approx(2 * 1000.0 * 0.95 * 0.95, abs=0.01)  # 451 Wh sold
    low, high = flex.levels(d)
    assert low[0, -1] == pytest.approx(0.0, abs=1e-6)
    assert high[0, -1] > 0  # the ceiling's count keeps what the losses may not have taken
    # No round trip when it does not pay for its losses (100 * 0.95 * 0.95 < 95).
    flat = optimise_schedule(flex, np.array([95.0, 95.0, 100.0, 100.0]), opts)
    assert flat.solver == "highs"
    np.testing.assert_allclose(flat.values_w, 0.0, atol=1e-6)


def test_the_ceiling_counts_what_reduced_discharge_may_store() -> None:
    """A stored-energy ceiling of 200 Wh: charging 1 kW for a slot may store 250 / 0.95 Wh
    in the ceiling's count, so the LP charges less than the floor's count would allow."""
    flex = FlexForecast.flat(2, absorb_w=1000, deliver_w=1000, e_absorb_wh=200, e_deliver_wh=1000)
    result = optimise_schedule(flex, np.array([-50.0, 100.0]), OptimiseOptions(margin=0.0))
    _, high = flex.levels(result.storage_w)
    assert high.max() <= 200 + 1e-6
    assert result.values_w[0] == pytest.approx(200 * 0.95 / SLOT_H, rel=1e-6)


def test_the_power_only_part_is_used_when_the_storage_cannot() -> None:
    """Negative prices with a full storage: only PV curtailment can absorb (it stores
    nothing), and it is not used while the storage can take the energy."""
    n = 4
    flex = FlexForecast.single(
        np.zeros(n),
        np.full(n, -2000.0),
        np.full(n, 2000.0),
        np.full(n, -4000.0),
        np.zeros(n),  # full: no room to store more
        np.zeros(n),
        np.full(n, 3000.0),  # PV that can be curtailed
    )
    result = optimise_schedule(flex, np.array([-80.0, 20.0, 20.0, 20.0]), OptimiseOptions(margin=0))
    assert result.values_w[0] == pytest.approx(3000.0)
    assert result.storage_w[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert result.power_only_w[0] == pytest.approx(3000.0)
    roomy = FlexForecast.single(
        np.zeros(n),
        np.full(n, -2000.0),
        np.full(n, 2000.0),
        np.full(n, -4000.0),
        np.full(n, 4000.0),
        np.zeros(n),
        np.full(n, 3000.0),
    )
    prices = np.array([-80.0, -80.0, 120.0, 120.0])
    result = optimise_schedule(roomy, prices, OptimiseOptions(margin=0))
    assert result.storage_w[0, 0] > 0  # the storage takes what it can sell later


def test_committed_energy_before_the_first_slot_counts() -> None:
    """The quarter hour under way already discharged 400 Wh (floor count): the schedule may
    only deliver what is left above the floor."""
    flex = FlexForecast.flat(2, absorb_w=2000, deliver_w=2000, e_absorb_wh=1000, e_deliver_wh=500)
    (battery,) = flex.storage
    committed = FlexForecast.single(
        flex.baseline_w,
        battery.p_min_w,
        battery.p_max_w,
        battery.e_min_wh,
        battery.e_max_wh,
        e_low_0_wh=-400.0,
        e_high_0_wh=-380.0,
    )
    opts = OptimiseOptions(margin=0.0, energy_neutral=False)
    result = optimise_schedule(committed, np.array([300.0, 300.0]), opts)
    low, _ = committed.levels(result.storage_w)
    assert low.min() == pytest.approx(-500.0, abs=1e-6)
    assert -result.values_w.sum() * SLOT_H == pytest.approx(100 * 0.95, rel=1e-6)


def test_a_commitment_already_past_the_margin_still_gets_an_lp_schedule() -> None:
    """The quarter hour under way committed more than the margin leaves of the window
    (-480 Wh of a -500 Wh floor, 10 % margin keeps -450 Wh), and neutrality asks the end
    back near 0 where nothing can charge: the LP does what it can (recharge, then hold)
    instead of calling the whole problem infeasible and falling back to greedy."""
    flex = FlexForecast.single(
        np.zeros(3),
        np.full(3, -2000.0),
        np.array([2000.0, 0.0, 0.0]),
        np.full(3, -500.0),
        np.full(3, 1000.0),
        e_low_0_wh=-480.0,
        e_high_0_wh=-456.0,
    )
    result = optimise_schedule(flex, np.array([100.0, 100.0, 100.0]), OptimiseOptions(margin=0.1))
    assert result.solver == "highs"
    low, _ = flex.levels(result.storage_w)
    assert low.min() >= -480.0 - 1e-6  # never below where it already was
    assert np.all(result.storage_w[0, 1:] == pytest.approx(0.0, abs=1e-6))
    # and the trader's own check agrees: what was committed before is not this schedule's
    assert flex.violations(result.values_w, result.storage_w) == []
    assert flex.violations(np.zeros(3), np.zeros((1, 3))) == []
    deeper = flex.violations(np.array([-400.0, 0.0, 0.0]), np.array([[-400.0, 0.0, 0.0]]))
    assert deeper == [f"slot {i}: storage group 0 below e_min_wh" for i in range(3)]


def test_negative_prices_lead_to_absorbing() -> None:
    prices = np.full(8, 60.0)
    prices[2:4] = -40.0
    flex = FlexForecast.flat(8, absorb_w=4000, deliver_w=4000, e_absorb_wh=2000, e_deliver_wh=2000)
    result = optimise_schedule(flex, prices)
    assert np.all(result.values_w[2:4] > 0)
    assert result.objective_eur < 0
    # Without neutrality the pool also absorbs at negative prices and sells what it holds.
    free = optimise_schedule(flex, prices, OptimiseOptions(energy_neutral=False))
    assert np.all(free.values_w[2:4] > 0)
    assert free.objective_eur < result.objective_eur


def test_negative_prices_never_charge_and_discharge_in_one_slot() -> None:
    """The LP relaxation would use both directions at once as an energy sink; the result
    must be a schedule a real battery can follow (checked by its own counts)."""
    flex = FlexForecast.flat(6, absorb_w=1000, deliver_w=1000, e_absorb_wh=10, e_deliver_wh=10)
    prices = np.array([-100.0, -100.0, 50.0, -100.0, 30.0, -100.0])
    opts = OptimiseOptions(energy_neutral=False)
    result = optimise_schedule(flex, prices, opts)
    assert result.solver == "highs"
    assert_feasible(result.values_w, result.storage_w, flex, opts)
    greedy = greedy_schedule(flex, prices, opts)
    assert result.objective_eur <= schedule_cost_eur(greedy.sum(axis=0), prices, 900) + 1e-12


# Group A: efficient, small window; group B: lossy, large window. margin 0, neutral.
A = part(-1000, 1000, -250, 250, eta=(0.95, 0.95))
B = part(-1000, 1000, -5000, 5000, eta=(0.8, 0.8))


@pytest.mark.parametrize(
    ("prices", "expected_a", "expected_b"),
    [
        # A fills its ceiling in the cheapest slot (950 W x 0.25 h / 0.95 = 250 Wh) and gives
        # back what its floor holds (225.6 Wh x 0.95 x 4 = 857.4 W) in the dearest; its energy
        # runs out, so B stores what is left of the spread (200 x 0.64 > 20) at full power
        # and sells it: 1000 W in the dearest slot, the rest (87.5 Wh x 0.8 x 4) after.
        # (190 > 200 x 0.9025: selling early and buying back would not pay for A's losses.)
        (
            [10.0, 20.0, 200.0, 190.0],
            [950.0, 0.0, -857.375, 0.0],
            [1000.0, 1000.0, -1000.0, -280.0],
        ),
        # A narrow spread pays for A's losses (120 x 0.9025 > 100), not for B's (76.8 < 100).
        ([100.0, 105.0, 120.0, 118.0], [950.0, 0.0, -857.375, 0.0], [0.0, 0.0, 0.0, 0.0]),
        # No spread: neither moves.
        ([50.0, 50.0, 50.0, 50.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_each_group_is_used_with_its_own_efficiency_and_window(
    prices: list[float], expected_a: list[float], expected_b: list[float]
) -> None:
    flex = FlexForecast(np.zeros(4), (A, B))
    result = optimise_schedule(flex, np.array(prices), OptimiseOptions(margin=0.0))
    assert (result.solver, result.status) == ("highs", "optimal")
    assert result.storage_w.shape == result.energy_wh.shape == (2, 4)
    np.testing.assert_allclose(result.storage_w, [expected_a, expected_b], atol=1e-6)
    np.testing.assert_allclose(result.values_w, result.storage_total_w, atol=1e-9)
    assert flex.violations(result.values_w, result.storage_w) == []
    np.testing.assert_allclose(result.energy_wh[:, -1], 0.0, atol=1e-6)  # each group neutral
    greedy = greedy_schedule(flex, np.array(prices), OptimiseOptions(margin=0.0))
    assert greedy.shape == (2, 4)
    assert flex.violations(greedy.sum(axis=0), greedy) == []


# A can only discharge, B only charge (lossless): together they could move energy from A to
# B through the grid, but each group must end no emptier than it started.
ONLY_DOWN = part(-1000, 0, -1000, 1000, eta=(1.0, 1.0))
ONLY_UP = part(0, 1000, -1000, 1000, eta=(1.0, 1.0))


@pytest.mark.parametrize(
    ("neutral", "tol_wh", "expected_down", "expected_up"),
    [
        (True, 0.0, [0.0, 0.0], [0.0, 0.0]),  # neutral per group, not over the sum
        (True, 250.0, [0.0, -1000.0], [0.0, 0.0]),  # 250 Wh below, sold in the dearer slot
        (False, 0.0, [-1000.0, -1000.0], [0.0, 0.0]),  # everything sold; buying never pays
    ],
)
def test_energy_neutral_holds_for_every_group(
    neutral: bool, tol_wh: float, expected_down: list[float], expected_up: list[float]
) -> None:
    flex = FlexForecast(np.zeros(2), (ONLY_DOWN, ONLY_UP))
    opts = OptimiseOptions(margin=0.0, energy_neutral=neutral, neutral_tol_wh=tol_wh)
    result = optimise_schedule(flex, np.array([50.0, 100.0]), opts)
    np.testing.assert_allclose(result.storage_w, [expected_down, expected_up], atol=1e-6)
    greedy = greedy_schedule(flex, np.array([50.0, 100.0]), opts)
    assert flex.violations(greedy.sum(axis=0), greedy) == []


@pytest.mark.parametrize(
    ("po_min", "po_max", "expected", "solver"),
    [
        # curtail PV at a negative price, cut consumption at a positive one, nothing at 0 or
        # without a price
        (-500.0, 2000.0, [2000.0, -500.0, 0.0, 0.0], "highs"),
        (0.0, 2000.0, [2000.0, 0.0, 0.0, 0.0], "highs"),
        (0.0, 0.0, [0.0, 0.0, 0.0, 0.0], "none"),
    ],
)
def test_no_storage_group_leaves_the_power_only_part(
    po_min: float, po_max: float, expected: list[float], solver: str
) -> None:
    flex = FlexForecast(np.zeros(4), (), np.full(4, po_min), np.full(4, po_max))
    assert flex.groups == 0
    result = optimise_schedule(flex, np.array([-10.0, 10.0, 0.0, np.nan]))
    assert result.solver == solver
    np.testing.assert_allclose(result.values_w, np.array(expected) * (1 - 0.03))
    assert result.storage_w.shape == result.energy_wh.shape == (0, 4)
    np.testing.assert_array_equal(result.storage_total_w, 0.0)
    assert greedy_schedule(flex, np.zeros(4)).shape == (0, 4)
    values, storage = fit_to_flex(np.array([5000.0, -5000.0, 100.0, np.nan]), flex)
    np.testing.assert_allclose(values, [po_max, po_min, min(100.0, po_max), 0.0])
    assert storage.shape == (0, 4)
    assert flex.violations(values, storage) == []


def test_committed_energy_counts_per_group_with_its_efficiencies() -> None:
    """Before the first slot A already gave 240 of its 250 Wh (floor count), B nothing: A may
    still deliver 10 Wh x 0.95 to the grid, B its whole floor of 100 Wh x 0.8."""
    a = StoragePart(-1000, 1000, -250, 250, e_low_0_wh=-240.0, e_high_0_wh=-216.6)
    b = part(-1000, 1000, -100, 100, eta=(0.8, 0.8))
    flex = FlexForecast(np.zeros(2), (a, b))
    opts = OptimiseOptions(margin=0.0, energy_neutral=False)
    result = optimise_schedule(flex, np.array([300.0, 300.0]), opts)
    delivered_wh = -result.storage_w.sum(axis=1) * SLOT_H
    np.testing.assert_allclose(delivered_wh, [10 * 0.95, 100 * 0.8], rtol=1e-6)
    np.testing.assert_allclose(result.energy_wh[:, -1], [-250.0, -100.0], atol=1e-6)


slot_count = st.integers(min_value=1, max_value=48)


@st.composite
def flex_and_prices(
    draw: st.DrawFn, committed: bool = False
) -> tuple[FlexForecast, np.ndarray, OptimiseOptions]:
    """0 to 3 storage groups of random bounds and efficiencies, some power-only, random
    prices; with ``committed``, each group starts where the slots before left it (a charge or
    a discharge, inside its bounds)."""
    n = draw(slot_count)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        lo = -rng.uniform(0, 20_000, n) * (rng.random(n) > 0.2)
        hi = rng.uniform(0, 20_000, n) * (rng.random(n) > 0.2)
        e_max = rng.uniform(0, 1.0, n) * draw(st.sampled_from([0.0, 100.0, 5_000.0, 30_000.0]))
        e_min = -rng.uniform(0, 1.0, n) * draw(st.sampled_from([0.0, 100.0, 5_000.0, 30_000.0]))
        eta_c = draw(st.sampled_from([1.0, 0.95, 0.8]))
        eta_d = draw(st.sampled_from([1.0, 0.95]))
        low_0 = high_0 = 0.0
        if committed:
            if rng.random() < 0.5:  # discharged before: the floor's count fell further
                low_0 = float(e_min.max()) * rng.random()
                high_0 = low_0 * eta_c * eta_d
            else:  # charged before: the ceiling's count rose further
                high_0 = float(e_max.min()) * rng.random()
                low_0 = high_0 * eta_c * eta_d
        parts.append(
            StoragePart(
                e_min_wh=e_min,
                e_max_wh=e_max,
                p_min_w=lo,
                p_max_w=hi,
                eta_charge=eta_c,
                eta_discharge=eta_d,
                e_low_0_wh=low_0,
                e_high_0_wh=high_0,
            )
        )
    po = rng.uniform(0, 3000, n) * (rng.random(n) > 0.5)
    flex = FlexForecast(
        rng.normal(0, 5000, n), tuple(parts), -po * draw(st.sampled_from([0.0, 1.0])), po
    )
    prices = rng.normal(draw(st.sampled_from([-20.0, 30.0, 80.0])), 80.0, n)
    opts = OptimiseOptions(
        energy_neutral=draw(st.booleans()), margin=draw(st.sampled_from([0.0, 0.03, 0.3]))
    )
    return flex, prices, opts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=flex_and_prices())
def test_any_envelope_gives_a_feasible_schedule_no_worse_than_greedy(
    case: tuple[FlexForecast, np.ndarray, OptimiseOptions],
) -> None:
    flex, prices, opts = case
    result = optimise_schedule(flex, prices, opts)
    assert result.values_w.shape == (len(flex),)
    assert result.storage_w.shape == (flex.groups, len(flex))
    assert np.all(np.isfinite(result.values_w))
    assert_feasible(result.values_w, result.storage_w, flex, opts, tol=1e-5)
    greedy = greedy_schedule(flex, prices, opts)
    assert_feasible(greedy.sum(axis=0), greedy, flex, opts, tol=1e-5)
    assert result.objective_eur <= schedule_cost_eur(greedy.sum(axis=0), prices, 900) + 1e-9
    assert result.objective_eur <= 1e-9  # doing nothing is always possible
    posted, storage = fit_to_flex(result.values_w, flex, storage_w=result.storage_w)
    np.testing.assert_allclose(posted, result.values_w, atol=1e-3)
    assert flex.violations(posted, storage) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=flex_and_prices(committed=True), noise=st.integers(0, 2**32 - 1))
def test_what_is_posted_is_inside_every_group_after_committed_slots(
    case: tuple[FlexForecast, np.ndarray, OptimiseOptions], noise: int
) -> None:
    """With what the slots before committed, a schedule of the LP (or of its fallback, when
    the margin leaves no room) and then the last guard are inside every group's bounds; so is
    the guard's answer to any values and splits at all."""
    flex, prices, opts = case
    result = optimise_schedule(flex, prices, opts)
    assert flex.violations(result.values_w, result.storage_w, tol=1e-2) == []
    posted, storage = fit_to_flex(result.values_w, flex, storage_w=result.storage_w)
    assert flex.violations(posted, storage) == []
    assert storage.shape == (flex.groups, len(flex))
    np.testing.assert_allclose(posted, storage.sum(axis=0) + (posted - storage.sum(axis=0)))
    rng = np.random.default_rng(noise)
    wild = rng.normal(0, 30_000, len(flex))
    wild[rng.random(len(flex)) < 0.1] = np.nan
    split = rng.normal(0, 20_000, (flex.groups, len(flex)))
    for given_split in (None, split):
        posted, storage = fit_to_flex(wild, flex, storage_w=given_split)
        assert flex.violations(posted, storage) == []


def test_a_tiny_time_limit_falls_back_to_a_valid_greedy_schedule() -> None:
    prices = np.tile(default_prices(1)[0].values, 4)
    flex = day_flex(len(prices))
    opts = OptimiseOptions(time_limit_s=1e-7)
    result = optimise_schedule(flex, prices, opts)
    # the solver stopped at its limit (its own status says so: no wall time asserted here)
    assert (result.solver, result.status) == ("greedy", "time_limit")
    assert "time_limit" in result.message
    assert_feasible(result.values_w, result.storage_w, flex, opts)
    assert abs(result.energy_wh[0, -1]) < 1e-6
    assert result.objective_eur < 0  # the fallback still trades


def test_a_failing_solver_falls_back_to_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("HiGHS is not feeling well")

    monkeypatch.setattr(optimise_mod, "linprog", broken)
    prices = default_prices(2)[0].values
    result = optimise_schedule(day_flex(), prices)
    assert (result.solver, result.status) == ("greedy", "failed")
    assert "not feeling well" in result.message
    assert_feasible(result.values_w, result.storage_w, day_flex(), OptimiseOptions())


@pytest.mark.parametrize(
    "flex",
    [
        FlexForecast.flat(96),  # no range at all
        FlexForecast.flat(96, e_absorb_wh=5000, e_deliver_wh=5000),  # energy but no power
        FlexForecast.single(np.full(96, np.nan), np.zeros(96), np.zeros(96), np.nan, np.inf),
        FlexForecast.flat(0, absorb_w=5000, e_absorb_wh=1000),
        FlexForecast(np.zeros(96)),  # no storage group, no power-only part
        FlexForecast(np.zeros(96), (part(0, 0, -500, 500), part(0, 0, 0, 0))),
    ],
)
def test_nothing_to_do_is_an_all_zero_schedule_not_an_error(flex: FlexForecast) -> None:
    prices = default_prices(0)[0].values[: len(flex)]
    result = optimise_schedule(flex, prices)
    assert (result.solver, result.status) == ("none", "no_flexibility")
    assert result.values_w.shape == (len(flex),)
    assert result.storage_w.shape == (flex.groups, len(flex))
    assert not np.any(result.values_w)
    assert result.objective_eur == 0.0


def test_power_without_energy_trades_nothing() -> None:
    flex = FlexForecast.flat(96, absorb_w=5000, deliver_w=5000)
    result = optimise_schedule(flex, default_prices(0)[0].values)
    np.testing.assert_allclose(result.values_w, 0.0, atol=1e-6)


def test_unpriced_slots_follow_the_baseline() -> None:
    prices = np.array([10.0, np.nan, 200.0, np.inf])
    flex = FlexForecast.flat(4, absorb_w=1000, deliver_w=1000, e_absorb_wh=500, e_deliver_wh=500)
    result = optimise_schedule(flex, prices)
    assert result.values_w[1] == result.values_w[3] == 0.0
    assert result.values_w[0] > 0 > result.values_w[2]


def test_mismatched_inputs_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="3 prices for 4 slots"):
        optimise_schedule(FlexForecast.flat(4), np.zeros(3))
    with pytest.raises(ValueError, match="one value per slot"):
        FlexForecast.single(np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="one value per slot"):
        FlexForecast(np.zeros(3), (A, part(0, 0, 0, 0)), po_max_w=np.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        OptimiseOptions(margin=1.0)
    with pytest.raises(ValueError, match="eta_charge"):
        FlexForecast.flat(2, eta_charge=0.0)
    with pytest.raises(ValueError, match="eta_discharge"):
        part(0, 0, 0, 0, eta=(0.9, 1.2))
    with pytest.raises(TypeError, match="StoragePart"):
        FlexForecast(np.zeros(2), ([0.0, 1.0],))  # type: ignore[arg-type]
    two = FlexForecast(np.zeros(3), (A, B))
    with pytest.raises(ValueError, match=r"storage split of shape \(3,\) for 2 group"):
        two.violations(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"storage split of shape \(1, 3\)"):
        fit_to_flex(np.zeros(3), two, storage_w=np.zeros((1, 3)))


def test_clip_to_flex_keeps_values_inside_the_shown_envelope() -> None:
    flex = FlexForecast.single(
        baseline_w=[1000.0, 1000.0, 1000.0, 1000.0],
        p_min_w=[-2000.0, -1000.0, 0.0, np.nan],
        p_max_w=[2000.0, 0.0, 500.0, 1000.0],
        e_min_wh=[-10_000.0] * 4,
        e_max_wh=[10_000.0] * 4,
    )
    values = np.array([2500.0, -2000.0, 600.0, 700.0])
    np.testing.assert_array_equal(clip_to_flex(values, flex), [2000.0, -1000.0, 500.0, 700.0])
    np.testing.assert_array_equal(
        clip_to_flex(np.array([np.nan, np.inf, 400.0, 0.0]), flex), [0.0, 0.0, 400.0, 0.0]
    )
    with pytest.raises(ScheduleBoundsError) as err:
        clip_to_flex(values, flex, strict=True)
    assert err.value.slots == [0, 1, 2]
    with pytest.raises(ValueError, match="3 values for 4 slots"):
        clip_to_flex(np.zeros(3), flex)
    # past an energy bound: scaled towards the baseline until inside
    tight = FlexForecast.flat(2, absorb_w=4000, deliver_w=4000, e_absorb_wh=500, e_deliver_wh=500)
    clipped = clip_to_flex(np.array([4000.0, 4000.0]), tight)
    assert tight.violations(clipped, clipped) == []
    assert clipped.sum() == pytest.approx(500 * 0.95 / SLOT_H, rel=1e-3)


def test_storage_levels_count_both_ways() -> None:
    low, high = storage_levels(np.array([1000.0, -1000.0]), 900, 0.9, 0.8)
    np.testing.assert_allclose(low, [225.0, 225.0 - 312.5])
    np.testing.assert_allclose(high, [312.5, 312.5 - 225.0])


# One slot; A: [-1000, 1000] W, B: [-3000, 2000] W, both roomy; power-only [-200, 500] W.
SPLIT = FlexForecast(
    np.zeros(1),
    (part(-1000, 1000, -10_000, 10_000), part(-3000, 2000, -10_000, 10_000)),
    np.array([-200.0]),
    np.array([500.0]),
)


@pytest.mark.parametrize(
    ("value", "split", "expected_value", "expected_split"),
    [
        (3000.0, None, 3000.0, [1000.0, 2000.0]),  # each group the same share of its bound
        (3400.0, None, 3400.0, [1000.0, 2000.0]),  # the groups full: 400 W power-only
        (9000.0, None, 3500.0, [1000.0, 2000.0]),  # clipped to everything together
        (-2000.0, None, -2000.0, [-500.0, -1500.0]),
        (-5000.0, None, -4200.0, [-1000.0, -3000.0]),
        (np.nan, None, 0.0, [0.0, 0.0]),  # not a number: follow the baseline
        (1500.0, [[1500.0], [0.0]], 1500.0, [1000.0, 0.0]),  # A clipped, power-only the rest
        (100.0, [[-1000.0], [500.0]], 0.0, [-1000.0, 500.0]),  # power-only full at 500 W
        (300.0, [[np.inf], [np.nan]], 300.0, [0.0, 0.0]),  # a broken split: power-only
    ],
)
def test_fit_to_flex_splits_over_the_groups_and_power_only(
    value: float, split: list[list[float]] | None, expected_value: float, expected_split: list
) -> None:
    values, storage = fit_to_flex(
        np.array([value]), SPLIT, storage_w=None if split is None else np.array(split)
    )
    np.testing.assert_allclose(values, [expected_value])
    np.testing.assert_allclose(storage[:, 0], expected_split)
    assert SPLIT.violations(values, storage) == []


def test_fit_to_flex_scales_only_the_group_past_its_energy() -> None:
    """A's ceiling of 100 Wh holds 380 W for a quarter hour (x 0.25 h / 0.95); B keeps its
    share, and strict mode names the slot that moved."""
    flex = FlexForecast(
        np.zeros(1), (part(-1000, 1000, -100, 100), part(-3000, 2000, -10_000, 10_000))
    )
    values, storage = fit_to_flex(np.array([3000.0]), flex)
    np.testing.assert_allclose(storage[:, 0], [100 * 0.95 / SLOT_H, 2000.0], rtol=1e-9)
    np.testing.assert_allclose(values, storage.sum(axis=0))
    assert flex.violations(values, storage, tol=0.0) == []
    with pytest.raises(ScheduleBoundsError) as err:
        fit_to_flex(np.array([3000.0]), flex, strict=True)
    assert err.value.slots == [0]


# Two slots; A: [-1000, 1000] W within +-100 Wh, B: [-500, 500] W, roomy; power-only
# [0, 300] W.
NAMED = FlexForecast(
    np.zeros(2),
    (part(-1000, 1000, -100, 100), part(-500, 500, -10_000, 10_000)),
    np.zeros(2),
    np.full(2, 300.0),
)


@pytest.mark.parametrize(
    ("values", "split", "expected"),
    [
        ([0.0, 0.0], [[0.0, 0.0], [0.0, 0.0]], []),
        ([300.0, 700.0], [[0.0, 200.0], [0.0, 500.0]], []),
        (
            [1200.0, 0.0],
            [[1200.0, 0.0], [0.0, 0.0]],
            [  # 1200 W for a quarter hour: 315.8 Wh in the ceiling's count, held after
                "slot 0: storage group 0 above p_max_w",
                "slot 0: storage group 0 above e_max_wh",
                "slot 1: storage group 0 above e_max_wh",
            ],
        ),
        ([0.0, -600.0], [[0.0, 0.0], [0.0, -600.0]], ["slot 1: storage group 1 below p_min_w"]),
        ([400.0, 0.0], [[0.0, 0.0], [0.0, 0.0]], ["slot 0: power-only above its bound"]),
        ([-10.0, 0.0], [[0.0, 0.0], [0.0, 0.0]], ["slot 0: power-only below its bound"]),
    ],
)
def test_violations_name_the_slot_the_group_and_the_bound(
    values: list[float], split: list[list[float]], expected: list[str]
) -> None:
    assert NAMED.violations(np.array(values), np.array(split)) == expected


def test_one_group_takes_a_plain_series_as_its_split() -> None:
    """What the demo passes for a one-group envelope (``decision.storage_w`` of old)."""
    flex = FlexForecast.flat(2, absorb_w=1000, deliver_w=1000, e_absorb_wh=100, e_deliver_wh=100)
    assert flex.violations([360.0, -360.0], np.array([360.0, -360.0])) == []
    assert flex.violations([1200.0, 0.0], np.array([1200.0, 0.0]))[0] == (
        "slot 0: storage group 0 above p_max_w"
    )
    low, high = flex.levels(np.array([360.0, -360.0]))  # 90 Wh in and out at the grid
    np.testing.assert_allclose(low, [[90 * 0.95, 90 * 0.95 - 90 / 0.95]])
    np.testing.assert_allclose(high, [[90 / 0.95, 90 / 0.95 - 90 * 0.95]])
