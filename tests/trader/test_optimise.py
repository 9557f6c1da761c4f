"""The schedule LP and its fallback over the pool's envelope: always inside it (less the
margin), both counts of the stored energy kept, neutral if asked, never worse than the greedy
schedule, fast, bounded in time, and all-zero rather than an error when there is nothing to
do."""

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


def shrunk(flex: FlexForecast, keep: float) -> FlexForecast:
    """The envelope a margin leaves (every bound times ``keep``)."""
    return FlexForecast(
        flex.baseline_w,
        flex.p_min_w * keep,
        flex.p_max_w * keep,
        flex.e_min_wh * keep,
        flex.e_max_wh * keep,
        flex.po_min_w * keep,
        flex.po_max_w * keep,
        flex.eta_charge,
        flex.eta_discharge,
        flex.slot_s,
        flex.e_low_0_wh,
        flex.e_high_0_wh,
    )


def assert_feasible(
    values: np.ndarray,
    storage: np.ndarray,
    flex: FlexForecast,
    opts: OptimiseOptions,
    tol: float = 1e-6,
) -> None:
    """Inside the shrunk envelope (power, both energy counts), neutral if asked."""
    keep = 1.0 - opts.margin
    scale = max(1.0, float(np.nan_to_num(np.abs(flex.p_max_w)).max(initial=0)))
    assert shrunk(flex, keep).violations(values, storage, tol=tol * scale) == []
    if opts.energy_neutral and len(flex):
        low, _ = flex.levels(storage)
        assert low[-1] >= -opts.neutral_tol_wh - tol * max(1.0, abs(flex.e_min_wh).max())


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
    np.testing.assert_allclose(result.energy_wh, flex.levels(result.storage_w)[0], atol=1e-6)
    # Charging happens in cheaper slots than discharging.
    charge, discharge = result.values_w > 0, result.values_w < 0
    assert prices[charge].mean() < prices[discharge].mean()
    greedy = greedy_schedule(flex, prices)
    assert result.objective_eur <= schedule_cost_eur(greedy, prices, 900) + 1e-9


def test_losses_are_paid_for_by_the_round_trip() -> None:
    """Energy neutral in the floor's count: what is sold is what was stored, less losses."""
    flex = FlexForecast.flat(4, absorb_w=1000, deliver_w=1000, e_absorb_wh=1000, e_deliver_wh=1000)
    opts = OptimiseOptions(margin=0.0)
    result = optimise_schedule(flex, np.array([10.0, 10.0, 200.0, 200.0]), opts)
    d = result.values_w
    np.testing.assert_allclose(d[:2], [1000.0, 1000.0])  # 475 Wh stored (floor count)
    assert -d[2:].sum() == pytest.approx(2 * 1000.0 * 0.95 * 0.95, abs=0.01)  # 451 Wh sold
    low, high = flex.levels(d)
    assert low[-1] == pytest.approx(0.0, abs=1e-6)
    assert high[-1] > 0  # the ceiling's count keeps what the losses may not have taken
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
    flex = FlexForecast(
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
    assert result.storage_w[0] == pytest.approx(0.0, abs=1e-6)
    roomy = FlexForecast(
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
    assert result.storage_w[0] > 0  # the storage takes what it can sell later


def test_committed_energy_before_the_first_slot_counts() -> None:
    """The quarter hour under way already discharged 400 Wh (floor count): the schedule may
    only deliver what is left above the floor."""
    flex = FlexForecast.flat(2, absorb_w=2000, deliver_w=2000, e_absorb_wh=1000, e_deliver_wh=500)
    committed = FlexForecast(
        flex.baseline_w,
        flex.p_min_w,
        flex.p_max_w,
        flex.e_min_wh,
        flex.e_max_wh,
        e_low_0_wh=-400.0,
        e_high_0_wh=-380.0,
    )
    opts = OptimiseOptions(margin=0.0, energy_neutral=False)
    result = optimise_schedule(committed, np.array([300.0, 300.0]), opts)
    low, _ = committed.levels(result.storage_w)
    assert low.min() == pytest.approx(-500.0, abs=1e-6)
    assert -result.values_w.sum() * SLOT_H == pytest.approx(100 * 0.95, rel=1e-6)


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
    assert result.objective_eur <= schedule_cost_eur(greedy, prices, 900) + 1e-12


slot_count = st.integers(min_value=1, max_value=48)


@st.composite
def flex_and_prices(draw: st.DrawFn) -> tuple[FlexForecast, np.ndarray, OptimiseOptions]:
    n = draw(slot_count)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo = -rng.uniform(0, 20_000, n) * (rng.random(n) > 0.2)
    hi = rng.uniform(0, 20_000, n) * (rng.random(n) > 0.2)
    e_max = rng.uniform(0, 1.0, n) * draw(st.sampled_from([0.0, 100.0, 5_000.0, 30_000.0]))
    e_min = -rng.uniform(0, 1.0, n) * draw(st.sampled_from([0.0, 100.0, 5_000.0, 30_000.0]))
    po = rng.uniform(0, 3000, n) * (rng.random(n) > 0.5)
    flex = FlexForecast(
        rng.normal(0, 5000, n),
        lo,
        hi,
        e_min,
        e_max,
        -po * draw(st.sampled_from([0.0, 1.0])),
        po,
        eta_charge=draw(st.sampled_from([1.0, 0.95, 0.8])),
        eta_discharge=draw(st.sampled_from([1.0, 0.95])),
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
    assert np.all(np.isfinite(result.values_w))
    assert_feasible(result.values_w, result.storage_w, flex, opts, tol=1e-5)
    greedy = greedy_schedule(flex, prices, opts)
    assert_feasible(greedy, greedy, flex, opts, tol=1e-5)
    assert result.objective_eur <= schedule_cost_eur(greedy, prices, 900) + 1e-9
    assert result.objective_eur <= 1e-9  # doing nothing is always possible
    posted = clip_to_flex(result.values_w, flex, storage_w=result.storage_w)
    np.testing.assert_allclose(posted, result.values_w, atol=1e-3)


def test_a_tiny_time_limit_falls_back_to_a_valid_greedy_schedule() -> None:
    prices = np.tile(default_prices(1)[0].values, 4)
    flex = day_flex(len(prices))
    opts = OptimiseOptions(time_limit_s=1e-7)
    t0 = time.perf_counter()
    result = optimise_schedule(flex, prices, opts)
    assert time.perf_counter() - t0 < 1.0
    assert (result.solver, result.status) == ("greedy", "time_limit")
    assert "time_limit" in result.message
    assert_feasible(result.values_w, result.storage_w, flex, opts)
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
    assert_feasible(result.values_w, result.storage_w, day_flex(), OptimiseOptions())


@pytest.mark.parametrize(
    "flex",
    [
        FlexForecast.flat(96),  # no range at all
        FlexForecast.flat(96, e_absorb_wh=5000, e_deliver_wh=5000),  # energy but no power
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
        FlexForecast(np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        OptimiseOptions(margin=1.0)
    with pytest.raises(ValueError, match="eta_charge"):
        FlexForecast.flat(2, eta_charge=0.0)


def test_clip_to_flex_keeps_values_inside_the_shown_envelope() -> None:
    flex = FlexForecast(
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
