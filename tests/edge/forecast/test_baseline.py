"""The storage under the site's own fallback policy, simulated over crafted days."""

from __future__ import annotations

import numpy as np
import pytest

from edge.behaviour import Behaviour, FallbackMode
from edge.control.plan import SiteLimits
from edge.forecast.baseline import BatteryParams, GivenHeatPump, simulate
from edge.forecast.history import SLOT_S

LIM = SiteLimits(grid_import_w=17_250, grid_export_w=10_000, soc_min_pct=10, soc_max_pct=95)
BAT = BatteryParams(capacity_wh=10_000, rated_charge_w=5000, rated_discharge_w=5000)


def run(
    load,
    pv,
    hours: float,
    soc: float,
    battery=BAT,
    hp=None,
    error=None,
    potential=None,
    local_control=None,
):
    """``hours`` of constant (or per-slot) load and PV."""
    n = round(hours * 4)
    load = np.broadcast_to(np.asarray(load, dtype=float), (n,)).copy()
    pv = np.broadcast_to(np.asarray(pv, dtype=float)[..., None], (n, 3)).copy()
    given = None
    if hp is not None:
        normal, boost, indoor = hp
        given = GivenHeatPump(np.full(n, normal), np.full(n, boost), np.full(n, indoor))
    return simulate(
        limits=LIM,
        durations_s=np.full(n, float(SLOT_S)),
        load_w=load,
        pv_sub_w=pv,
        outdoor_sub_c=np.full((n, 3), 10.0),
        battery=battery,
        soc_pct=soc,
        given_hp=given,
        error_wh=None if error is None else np.asarray(error, dtype=float),
        pv_potential_sub_w=potential,
        **({} if local_control is None else {"local_control": local_control}),
    )


# (name, load W, pv W, hours, start SoC %) -> first slot's battery and grid, and at the end
# the stored Wh, the battery and grid power
DAYS = [
    # a PV surplus charges the battery to the top of its window (the BMS tapers above 90 %)
    ("surplus", 500, 4000, 8, 50, -3500, 0, 9500, 0, -3500),
    # the evening drains it to the floor, then the grid takes over
    ("evening", 1500, 0, 8, 60, 1500, 0, 1000, 0, 1500),
    # a small surplus all day: the battery takes all of it
    ("small surplus", 300, 800, 4, 20, -500, 0, 2000 + 4 * 500 * 0.95, -500, 0),
    # nothing to do at the floor without sun
    ("empty night", 400, 0, 6, 10, 0, 400, 1000, 0, 400),
    # full and sunny: export
    ("full", 500, 3000, 2, 95, 0, -2500, 9500, 0, -2500),
]


@pytest.mark.parametrize(
    ("name", "load", "pv", "hours", "soc", "bat0", "grid0", "stored", "bat_end", "grid_end"), DAYS
)
def test_a_crafted_day(name, load, pv, hours, soc, bat0, grid0, stored, bat_end, grid_end):
    path = run(load, pv, hours, soc)
    assert path.battery_w[0] == pytest.approx(bat0, abs=1)
    assert path.grid_w[0] == pytest.approx(grid0, abs=1)
    assert path.stored_wh[-1] == pytest.approx(stored, abs=5)
    assert path.battery_w[-1] == pytest.approx(bat_end, abs=1)
    assert path.grid_w[-1] == pytest.approx(grid_end, abs=1)
    # grid = load - pv - battery in every slot (no heat pump here)
    np.testing.assert_allclose(path.grid_w, load - path.pv_w - path.battery_w, atol=1e-6)


def test_charging_stores_eta_and_discharging_draws_one_over_eta():
    charge = run(0, 1000, 1, 50)
    assert charge.stored_wh[-1] == pytest.approx(5000 + 950, abs=0.5)
    discharge = run(1000, 0, 1, 50)
    assert discharge.stored_wh[-1] == pytest.approx(5000 - 1000 / 0.95, abs=0.5)


def test_the_bms_taper_cuts_charging_near_full():
    big = BatteryParams(capacity_wh=100_000, rated_charge_w=5000, rated_discharge_w=5000)
    path = run(0, 6000, 0.25, 92, battery=big)  # 5000 W asked; at 92 % the BMS allows 4000
    # ~0.95 % more SoC by the slot's end: the limit falls from 4000 W towards 3525 W
    assert 5000 * (100 - 92.95) / 10 < path.charge_limit_w[0] < 4000
    assert 3600 < -path.battery_w[0] < 4000
    assert path.grid_w[0] == pytest.approx(-6000 - path.battery_w[0])  # the rest exported
    later = BatteryParams(100_000, 5000, 5000, charge_taper_pct=98)
    gentle = run(0, 6000, 0.25, 92, battery=later)
    assert gentle.battery_w[0] == pytest.approx(-5000)  # no taper yet: the rating


def test_peak_shaving_blocks_the_heat_pump_at_the_grid_limit():
    # 16 kW of household load and a 2 kW heat pump pass the 17.25 kW fuse: block the heat pump
    empty = run(16_000, 0, 1, 10, hp=(2000, 2000, 21.0))
    np.testing.assert_allclose(empty.heat_pump_w, 0.0)
    np.testing.assert_allclose(empty.grid_w, 16_000)
    # with energy in the battery the battery shaves instead and the heat pump runs
    full = run(16_000, 0, 0.5, 80, hp=(2000, 2000, 21.0))
    np.testing.assert_allclose(full.heat_pump_w, 2000)
    np.testing.assert_allclose(full.grid_w, 13_000)
    # the comfort band forbids blocking a cold house
    cold = run(16_000, 0, 1, 10, hp=(2000, 2000, 19.0))
    np.testing.assert_allclose(cold.heat_pump_w, 2000)


def test_the_heat_pump_is_boosted_on_a_surplus_the_full_battery_cannot_take():
    path = run(300, 5000, 1, 95, hp=(0, 1500, 21.0))
    np.testing.assert_allclose(path.heat_pump_w, 1500)  # SG-Ready 3 on the surplus
    np.testing.assert_allclose(path.grid_w, 300 + 1500 - 5000)
    nothing = run(300, 5000, 1, 95, hp=(0, 0, 21.0))  # a warm house: a boost starts nothing
    np.testing.assert_allclose(nothing.heat_pump_w, 0)


def test_pv_is_curtailed_at_the_export_limit():
    path = run(500, 12_000, 1, 95)
    np.testing.assert_allclose(path.grid_w, -10_000)
    np.testing.assert_allclose(path.pv_w, 10_500)


def test_no_battery_is_just_load_minus_pv():
    path = run(700, 300, 1, None, battery=None)
    np.testing.assert_allclose(path.grid_w, 400)
    np.testing.assert_allclose(path.stored_wh, 0)


def test_an_error_at_night_is_banked_until_the_battery_feels_it():
    """2 kWh more demand than forecast during a night at the floor changes nothing then,
    and takes 2 kWh from the next morning's charging."""
    night, day = 24, 8  # slots: 6 h night, 2 h sun
    load = np.r_[np.full(night, 300.0), np.full(day, 300.0)]
    pv = np.r_[np.zeros(night), np.full(day, 3300.0)]
    error = np.zeros(night + day)
    error[0] = 2000.0
    nominal = run(load, pv, 8, 10)
    low = run(load, pv, 8, 10, error=error)
    np.testing.assert_allclose(low.stored_wh[:night], nominal.stored_wh[:night])
    assert nominal.stored_wh[-1] - low.stored_wh[-1] == pytest.approx(2000 * 0.95, abs=2)
    # the grid sees the extra demand when it happens (the empty battery cannot cover it),
    # and not again when the battery feels it in the morning
    assert low.grid_w[0] == pytest.approx(nominal.grid_w[0] + 2000 / 0.25)
    np.testing.assert_allclose(low.grid_w[1:], nominal.grid_w[1:])


def test_less_demand_is_banked_until_it_can_physically_happen():
    """2 kWh less demand: at night at the floor the battery cannot charge from it; by day it
    can only drop the household load (300 W) as long as the sun gives no more."""
    load = np.full(32, 300.0)
    pv = np.r_[np.zeros(24), np.full(8, 3300.0)]
    error = np.zeros(32)
    error[0] = -2000.0
    nominal = run(load, pv, 8, 10)
    high = run(load, pv, 8, 10, error=error, potential=np.repeat(pv[:, None], 3, axis=1))
    np.testing.assert_allclose(high.stored_wh[:24], nominal.stored_wh[:24])
    extra = high.stored_wh[-1] - nominal.stored_wh[-1]
    assert extra == pytest.approx(2 * 300 * 0.95, abs=2)  # the load gone for 2 h, no more
    # on the grid: only the household load that could vanish in that slot
    assert high.grid_w[0] == pytest.approx(0.0)
    np.testing.assert_allclose(high.grid_w[1:], nominal.grid_w[1:])
    sun = np.r_[np.zeros(24), np.full(8, 5000.0)]  # a brighter sun could give 5 kW by day
    brighter = run(load, pv, 8, 10, error=error, potential=np.repeat(sun[:, None], 3, axis=1))
    assert brighter.stored_wh[-1] - nominal.stored_wh[-1] == pytest.approx(2000 * 0.95, abs=2)


SHAVE = Behaviour(fallback_mode=FallbackMode.PEAK_SHAVING, peak_shaving_limit_w=4000.0)


# The baseline ahead in the site's fallback mode: (name, load, pv, hours, soc) -> first slot's
# battery and grid, stored Wh at the end, under peak shaving (4 kW)
SHAVED_DAYS = [
    # the evening below the limit: the battery keeps its energy for a peak
    ("evening", 1500, 0, 8, 60, 0, 1500, 6000),
    # a peak: the battery covers what is above 4 kW until it reaches its floor
    ("peak", 6000, 0, 2, 60, 2000, 4000, 6000 - 2 * 2000 / 0.95),
    # the afternoon surplus still charges it
    ("surplus", 500, 4000, 8, 50, -3500, 0, 9500),
]


@pytest.mark.parametrize(
    ("name", "load", "pv", "hours", "soc", "bat0", "grid0", "stored"), SHAVED_DAYS
)
def test_a_crafted_day_peak_shaving(name, load, pv, hours, soc, bat0, grid0, stored):
    path = run(load, pv, hours, soc, local_control=SHAVE.local_control())
    assert path.battery_w[0] == pytest.approx(bat0, abs=1)
    assert path.grid_w[0] == pytest.approx(grid0, abs=1)
    assert path.stored_wh[-1] == pytest.approx(stored, abs=5)
