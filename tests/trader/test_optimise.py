"""The schedule LP and its fallback: always inside the shown flexibility (less the margin),
energy window and neutrality kept, never worse than the greedy schedule, fast, bounded in
time, and all-zero rather than an error when there is nothing to do."""

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
    clip_to_flex,
    greedy_schedule,
    optimise_schedule,
    schedule_cost_eur,
    storage_trajectory,
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


def assert_feasible(
    values: np.ndarray, flex: FlexForecast, opts: OptimiseOptions, tol: float = 1e-6
) -> None:
    """Inside the shrunk power range, inside the shrunk energy window, neutral if asked."""
    keep = 1.0 - opts.margin
    lo, hi = flex.delta_bounds()
    scale = max(1.0, np.abs(lo).max(initial=0), np.abs(hi).max(initial=0))
    assert np.all(values <= np.maximum(hi, 0) * keep + tol * scale)
    assert np.all(values >= np.minimum(lo, 0) * keep - tol * scale)
    level = storage_trajectory(values, flex.slot_s, opts.eta_charge, opts.eta_discharge)
    if level.size:
        e_tol = tol * max(1.0, flex.e_absorb_wh, flex.e_deliver_wh)
        assert level.max() <= max(flex.e_absorb_wh, 0) * keep + e_tol
        assert level.min() >= -max(flex.e_deliver_wh, 0) * keep - e_tol
        if opts.energy_neutral:
            assert abs(level[-1]) <= opts.neutral_tol_wh + e_tol


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
    assert_feasible(result.values_w, flex, OptimiseOptions())
    np.testing.assert_allclose(
        result.energy_wh, storage_trajectory(result.values_w, 900), atol=1e-6
    )
    # Charging happens in cheaper slots than discharging.
    charge, discharge = result.values_w > 0, result.values_w < 0
    assert prices[charge].mean() < prices[discharge].mean()
    greedy = greedy_schedule(flex, prices)
    assert result.objective_eur <= schedule_cost_eur(greedy, prices, 900) + 1e-9


def test_losses_are_paid_for_by_the_round_trip() -> None:
    """Energy neutral in the storage: what is discharged is what was charged, less losses."""
    flex = FlexForecast.flat(4, absorb_w=1000, deliver_w=1000, e_absorb_wh=1000, e_deliver_wh=1000)
    opts = OptimiseOptions(margin=0.0)
    result = optimise_schedule(flex, np.array([10.0, 10.0, 200.0, 200.0]), opts)
    d = result.values_w
    np.testing.assert_allclose(d[:2], [1000.0, 1000.0])  # 475 Wh stored
    assert -d[2:].sum() == pytest.approx(2 * 1000.0 * 0.95 * 0.95, abs=0.01)  # 451 Wh sold
    charged = d[d > 0].sum() * SLOT_H * 0.95
    discharged = -d[d < 0].sum() * SLOT_H / 0.95
    assert charged == pytest.approx(discharged, abs=1.0)
    # No round trip when it does not pay for its losses (100 * 0.95 * 0.95 < 95).
    flat = optimise_schedule(flex, np.array([95.0, 95.0, 100.0, 100.0]), opts)
    assert flat.solver == "highs"
    np.testing.assert_allclose(flat.values_w, 0.0, atol=1e-6)


def test_negative_prices_lead_to_absorbing() -> None:
    prices = np.full(8, 60.0)
    prices[2:4] = -40.0
    flex = FlexForecast.flat(8, absorb_w=4000, deliver_w=4000, e_absorb_wh=2000, e_deliver_wh=2000)
    result = optimise_schedule(flex, prices)
    assert np.all(result.values_w[2:4] > 0)
    assert result.values_w[2:4].sum() == pytest.approx(2 * 4000 * 0.9)
    assert result.objective_eur < 0
    # Without neutrality the pool also absorbs at negative prices and sells what it holds.
    free = optimise_schedule(flex, prices, OptimiseOptions(energy_neutral=False))
    assert np.all(free.values_w[2:4] > 0)
    assert free.objective_eur < result.objective_eur


def test_negative_prices_never_charge_and_discharge_in_one_slot() -> None:
    """The LP relaxation would use both directions at once as an energy sink; the result
    must be a schedule a real battery can follow (checked by its own trajectory)."""
    flex = FlexForecast.flat(6, absorb_w=1000, deliver_w=1000, e_absorb_wh=10, e_deliver_wh=10)
    prices = np.array([-100.0, -100.0, 50.0, -100.0, 30.0, -100.0])
    opts = OptimiseOptions(energy_neutral=False)
    result = optimise_schedule(flex, prices, opts)
    assert result.solver == "highs"
    assert_feasible(result.values_w, flex, opts)
    greedy = greedy_schedule(flex, prices, opts)
    assert result.objective_eur <= schedule_cost_eur(greedy, prices, 900) + 1e-12


slot_count = st.integers(min_value=1, max_value=48)


@st.composite
def flex_and_prices(draw: st.DrawFn) -> tuple[FlexForecast, np.ndarray, OptimiseOptions]:
    n = draw(slot_count)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    baseline = rng.normal(0, 5000, n)
    lo = -rng.uniform(0, 20_000, n) * (rng.random(n) > 0.2)
    hi = rng.uniform(0, 20_000, n) * (rng.random(n) > 0.2)
    if draw(st.booleans()):  # sometimes a baseline outside the shown range
        lo[0] = hi[0] = 500.0
    flex = FlexForecast(
        baseline,
        baseline + lo,
        baseline + hi,
        draw(st.sampled_from([0.0, 100.0, 5_000.0, 30_000.0])),
        draw(st.sampled_from([0.0, 100.0, 5_000.0, 30_000.0])),
    )
    prices = rng.normal(draw(st.sampled_from([-20.0, 30.0, 80.0])), 80.0, n)
    opts = OptimiseOptions(
        energy_neutral=draw(st.booleans()),
        margin=draw(st.sampled_from([0.0, 0.1, 0.3])),
        eta_charge=draw(st.sampled_from([1.0, 0.95, 0.8])),
        eta_discharge=draw(st.sampled_from([1.0, 0.95])),
    )
    return flex, prices, opts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=flex_and_prices())
def test_any_flexibility_gives_a_feasible_schedule_no_worse_than_greedy(
    case: tuple[FlexForecast, np.ndarray, OptimiseOptions],
) -> None:
    flex, prices, opts = case
    result = optimise_schedule(flex, prices, opts)
    assert result.values_w.shape == (len(flex),)
    assert np.all(np.isfinite(result.values_w))
    assert_feasible(result.values_w, flex, opts)
    greedy = greedy_schedule(flex, prices, opts)
    assert_feasible(greedy, flex, opts)
    assert result.objective_eur <= schedule_cost_eur(greedy, prices, 900) + 1e-9
    assert result.objective_eur <= 1e-9  # doing nothing is always possible
    posted = clip_to_flex(result.values_w, flex)
    lo, hi = flex.delta_bounds()
    assert np.all((posted >= lo) & (posted <= hi))


def test_a_tiny_time_limit_falls_back_to_a_valid_greedy_schedule() -> None:
    prices = np.tile(default_prices(1)[0].values, 4)
    flex = day_flex(len(prices))
    opts = OptimiseOptions(time_limit_s=1e-7)
    t0 = time.perf_counter()
    result = optimise_schedule(flex, prices, opts)
    assert time.perf_counter() - t0 < 1.0
    assert (result.solver, result.status) == ("greedy", "time_limit")
    assert "time_limit" in result.message
    assert_feasible(result.values_w, flex, opts)
    assert abs(result.energy_wh[-1]) < 1e-6
    assert result.objective_eur < 0  # the fallback still trades


def test_a_failing_solver_falls_back_to_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("HiGHS is not feeling well")

    monkeypatch.setattr(optimise_mod, "linprog", broken)
    prices = default_prices(2)[0].values
    result = optimise_schedule(day_flex(), prices)
    assert (result.solver, result.status) == ("greedy", "failed")
    assert "not feeling well" in result.message
    assert_feasible(result.values_w, day_flex(), OptimiseOptions())


@pytest.mark.parametrize(
    "flex",
    [
        FlexForecast.flat(96),  # no range at all
        FlexForecast.flat(96, absorb_w=5000, deliver_w=5000),  # power but no energy
        FlexForecast.flat(96, e_absorb_wh=5000, e_deliver_wh=5000),  # energy but no power
        FlexForecast.flat(96, absorb_w=5000, deliver_w=5000, e_absorb_wh=-5, e_deliver_wh=-1),
        FlexForecast(np.full(96, np.nan), np.zeros(96), np.zeros(96), np.nan, np.inf),
        FlexForecast.flat(0, absorb_w=5000, e_absorb_wh=1000),
    ],
)
def test_nothing_to_do_is_an_all_zero_schedule_not_an_error(flex: FlexForecast) -> None:
    prices = default_prices(0)[0].values[: len(flex)]
    result = optimise_schedule(flex, prices)
    assert (result.solver, result.status) == ("none", "no_flexibility")
    assert result.values_w.shape == (len(flex),)
    assert not np.any(result.values_w)
    assert result.objective_eur == 0.0


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
        FlexForecast(np.zeros(3), np.zeros(4), np.zeros(3), 0, 0)
    with pytest.raises(ValueError, match="margin"):
        OptimiseOptions(margin=1.0)
    with pytest.raises(ValueError, match="eta_charge"):
        OptimiseOptions(eta_charge=0.0)


def test_clip_to_flex_keeps_values_inside_the_shown_range() -> None:
    flex = FlexForecast(
        baseline_w=[1000.0, 1000.0, 1000.0, 1000.0],
        p_min_w=[-1000.0, 0.0, 1500.0, np.nan],
        p_max_w=[3000.0, 1000.0, 2000.0, 2000.0],
        e_absorb_wh=0.0,
        e_deliver_wh=0.0,
    )
    values = np.array([2500.0, -2000.0, 0.0, 700.0])
    np.testing.assert_array_equal(clip_to_flex(values, flex), [2000.0, -1000.0, 500.0, 0.0])
    np.testing.assert_array_equal(
        clip_to_flex(np.array([np.nan, np.inf, 600.0, 0.0]), flex), [0.0, 0.0, 600.0, 0.0]
    )
    with pytest.raises(ScheduleBoundsError) as err:
        clip_to_flex(values, flex, strict=True)
    assert err.value.slots == [0, 1, 2, 3]
    inside = np.array([1999.0, -1000.0, 500.0, 0.0])
    np.testing.assert_array_equal(clip_to_flex(inside, flex, strict=True), inside)
    with pytest.raises(ValueError, match="3 values for 4 slots"):
        clip_to_flex(np.zeros(3), flex)


def test_without_losses_neutrality_is_zero_net_grid_energy() -> None:
    prices = default_prices(5)[0].values
    opts = OptimiseOptions(eta_charge=1.0, eta_discharge=1.0)
    result = optimise_schedule(day_flex(), prices, opts)
    assert result.solver == "highs"
    assert np.any(result.values_w)
    assert result.values_w.sum() * SLOT_H == pytest.approx(0.0, abs=1e-3)
