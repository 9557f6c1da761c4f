"""Site control maths as tables: one row per control cycle, inputs -> expected plan.

Cycle length is one hour in most rows so the SoC-window energy bound is easy to read
(1 % of a 10 kWh battery = 100 W for an hour); rows that test ratings use 1 s cycles.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.control.plan import (
    Battery,
    HeatPump,
    SgReady,
    SiteInputs,
    SiteLimits,
    battery_window,
    fallback,
    follow,
    peak_shaving,
)
from protocols.messages import Limit

LIM = SiteLimits(
    grid_import_w=10_000,
    grid_export_w=5_000,
    soc_min_pct=10,
    soc_max_pct=90,
    comfort_min_c=19.5,
    comfort_max_c=23.0,
)
H = 3600.0


def bat(soc: float, charge: float = 5000, discharge: float = 5000) -> Battery:
    return Battery(soc_pct=soc, capacity_wh=10_000, max_charge_w=charge, max_discharge_w=discharge)


def hp(normal: float = 1000, boost: float = 2500, indoor: float = 21.0) -> HeatPump:
    return HeatPump(normal_w=normal, boost_w=boost, indoor_c=indoor)


# --- battery window ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("battery", "cycle_s", "expected"),
    [
        (bat(50), 1.0, (-5000, 5000, Limit.DEVICE_RATING, Limit.DEVICE_RATING)),
        (
            bat(50, charge=3000, discharge=2000),
            1.0,
            (-3000, 2000, Limit.DEVICE_RATING, Limit.DEVICE_RATING),
        ),
        (bat(10), 1.0, (-5000, 0, Limit.DEVICE_RATING, Limit.SOC_WINDOW)),  # at the floor
        (bat(5), 1.0, (-5000, 0, Limit.DEVICE_RATING, Limit.SOC_WINDOW)),  # below it
        (bat(90), 1.0, (0, 5000, Limit.SOC_WINDOW, Limit.DEVICE_RATING)),  # at the ceiling
        (bat(12), H, (-5000, 200, Limit.DEVICE_RATING, Limit.SOC_WINDOW)),  # 200 Wh left
        (bat(89), H, (-100, 5000, Limit.SOC_WINDOW, Limit.DEVICE_RATING)),
        # near an edge a 1 s cycle spends what is left over the 120 s taper, not in one cycle:
        # 10 Wh above the floor allows 300 W (not 36 kW), 50 Wh 1500 W, 100 Wh the rating
        (bat(10.1), 1.0, (-5000, 300, Limit.DEVICE_RATING, Limit.SOC_WINDOW)),
        (bat(10.5), 1.0, (-5000, 1500, Limit.DEVICE_RATING, Limit.SOC_WINDOW)),
        (bat(89.9), 1.0, (-300, 5000, Limit.SOC_WINDOW, Limit.DEVICE_RATING)),
        (bat(12), 1.0, (-5000, 5000, Limit.DEVICE_RATING, Limit.DEVICE_RATING)),
        (bat(10.1), 900.0, (-5000, 40, Limit.DEVICE_RATING, Limit.SOC_WINDOW)),  # forecast step
        (None, 1.0, (0, 0, Limit.DEVICE_UNAVAILABLE, Limit.DEVICE_UNAVAILABLE)),
    ],
)
def test_battery_window(battery, cycle_s, expected):
    lo, hi, lo_limit, hi_limit = battery_window(battery, LIM, cycle_s)
    assert (lo, hi, lo_limit, hi_limit) == pytest.approx(expected)


# --- fallback: self-consumption, peak shaving, export limit, heat pump -------------------
# load, pv, battery, heat pump -> battery_w, pv_limit_w, sg_ready, grid_w
FALLBACK = [
    # battery covers the load
    (800, 0, bat(50), None, 800, None, None, 0),
    # battery takes the PV surplus
    (500, 3000, bat(50), None, -2500, None, None, 0),
    # battery empty: load from the grid
    (800, 0, bat(10), None, 0, None, None, 800),
    # battery full: surplus exported, no curtailment below the export limit
    (500, 3000, bat(90), None, 0, None, None, -2500),
    # battery full and surplus beyond the export limit: curtail PV to the limit
    (500, 8000, bat(90), None, 0, 5500, None, -5000),
    # charge rating limits the battery: the rest is exported, within the limit
    (0, 7000, bat(50), None, -5000, None, None, -2000),
    # no battery at all
    (1200, 0, None, None, 0, None, None, 1200),
    # peak above the fuse: battery at its rating, heat pump blocked (comfort allows)
    (14_000, 0, bat(50), hp(normal=2000), 5000, None, SgReady.BLOCKED, 9000),
    # peak above the fuse, but the house is at the bottom of its band: no blocking
    (14_000, 0, bat(50), hp(normal=2000, indoor=19.5), 5000, None, SgReady.NORMAL, 11_000),
    # big surplus after the battery: boost the heat pump (SG-Ready 3)
    (500, 9000, bat(50), hp(normal=500, boost=2500), -5000, None, SgReady.RECOMMENDED, -1000),
    # surplus smaller than the boost's extra draw: leave it on its thermostat
    (500, 6500, bat(50), hp(normal=500, boost=2500), -5000, None, SgReady.NORMAL, -500),
    # surplus but house already at the top of its band: no boost
    (500, 9000, bat(50), hp(normal=0, boost=2500, indoor=23.0), -5000, None, SgReady.NORMAL, -3500),
]


@pytest.mark.parametrize(
    ("load", "pv", "battery", "heat_pump", "battery_w", "pv_limit", "sg", "grid"), FALLBACK
)
def test_fallback(load, pv, battery, heat_pump, battery_w, pv_limit, sg, grid):
    plan = fallback(SiteInputs(load, pv, battery, heat_pump), LIM, cycle_s=1.0)
    assert plan.battery_w == pytest.approx(battery_w)
    assert plan.pv_limit_w == (None if pv_limit is None else pytest.approx(pv_limit))
    assert plan.sg_ready == sg
    assert plan.grid_w == pytest.approx(grid)


# --- fallback mode "peak shaving": the battery only caps the import (and export) --------
# load, pv, battery, heat pump, limit -> battery_w, pv_limit_w, sg_ready, grid_w
PEAK_SHAVING = [
    # below the limit the battery waits for the peak: the load comes from the grid
    (800, 0, bat(50), None, 4000, 0, None, None, 800),
    (3999, 0, bat(50), None, 4000, 0, None, None, 3999),
    # above the limit it discharges the excess only
    (6000, 0, bat(50), None, 4000, 2000, None, None, 4000),
    # beyond its rating: the rest is imported
    (12_000, 0, bat(50), None, 4000, 5000, None, None, 7000),
    # at its SoC floor it has nothing to give
    (6000, 0, bat(10), None, 4000, 0, None, None, 6000),
    # battery at its rating and still above: the heat pump is blocked (comfort allows)
    (8000, 0, bat(50), hp(normal=2000), 4000, 4000, None, SgReady.BLOCKED, 4000),
    # ... not at the bottom of the comfort band
    (8000, 0, bat(50), hp(normal=2000, indoor=19.5), 4000, 5000, None, SgReady.NORMAL, 5000),
    # below the limit the heat pump runs on its thermostat
    (1000, 0, bat(50), hp(normal=2000), 4000, 0, None, SgReady.NORMAL, 3000),
    # a PV surplus recharges it for the next peak (never the grid)
    (500, 3000, bat(50), None, 4000, -2500, None, None, 0),
    (0, 7000, bat(50), None, 4000, -5000, None, None, -2000),
    # full, and a surplus beyond the export limit: PV curtailed to the export limit
    (500, 8000, bat(90), None, 4000, 0, 5500, None, -5000),
    # a limit above the grid connection is held at the connection's import limit
    (12_000, 0, bat(50), None, 50_000, 2000, None, None, 10_000),
    # a limit of 0 W: no import at all while the battery lasts
    (800, 0, bat(50), None, 0, 800, None, None, 0),
    # no battery: nothing to shave with
    (6000, 0, None, None, 4000, 0, None, None, 6000),
]


@pytest.mark.parametrize(
    ("load", "pv", "battery", "heat_pump", "limit", "battery_w", "pv_limit", "sg", "grid"),
    PEAK_SHAVING,
)
def test_peak_shaving(load, pv, battery, heat_pump, limit, battery_w, pv_limit, sg, grid):
    plan = peak_shaving(SiteInputs(load, pv, battery, heat_pump), LIM, limit, cycle_s=1.0)
    assert plan.battery_w == pytest.approx(battery_w)
    assert plan.pv_limit_w == (None if pv_limit is None else pytest.approx(pv_limit))
    assert plan.sg_ready == sg
    assert plan.grid_w == pytest.approx(grid)


# One evening, cycle by cycle: load, pv -> battery under self-consumption, under peak shaving
# (4 kW limit). Self-consumption spends the battery on every watt; peak shaving only on peaks.
EVENING = [
    (300, 2500, -2200, -2200),  # afternoon surplus: both charge
    (1500, 0, 1500, 0),  # evening base load: only self-consumption discharges
    (5500, 0, 5000, 1500),  # the cooker and the car: peak shaving caps the import at 4 kW
    (9000, 0, 5000, 5000),  # beyond the battery's rating: both at the rating
    (700, 0, 700, 0),  # night
]


@pytest.mark.parametrize(("load", "pv", "self_consumption_w", "peak_shaving_w"), EVENING)
def test_fallback_modes_per_cycle(load, pv, self_consumption_w, peak_shaving_w):
    inputs = SiteInputs(load, pv, bat(50))
    assert fallback(inputs, LIM).battery_w == pytest.approx(self_consumption_w)
    assert peak_shaving(inputs, LIM, 4000).battery_w == pytest.approx(peak_shaving_w)


# --- following a cloud target ------------------------------------------------------------
# target, load, pv, battery, heat pump, cycle -> battery_w, pv_limit, sg, grid, clamped_by
FOLLOW = [
    # within reach with the battery alone
    (-2000, 800, 0, bat(50), None, 1.0, 2800, None, None, -2000, ()),
    (3000, 800, 2000, bat(50), None, 1.0, -4200, None, None, 3000, ()),
    # asks for more export than the export limit: clamped to it
    (-9000, 0, 0, bat(50), None, 1.0, 5000, None, None, -5000, (Limit.EXPORT_LIMIT,)),
    # asks for more import than the fuse allows: clamped
    (
        12_000,
        0,
        0,
        bat(50),
        None,
        1.0,
        -5000,
        None,
        None,
        5000,
        (Limit.GRID_LIMIT, Limit.DEVICE_RATING),
    ),
    # discharge stopped by the SoC floor (1 h cycle, 300 Wh above the floor)
    (-2000, 500, 0, bat(13), None, H, 300, None, None, 200, (Limit.SOC_WINDOW,)),
    # charge stopped by the SoC ceiling
    (3000, 0, 0, bat(89), None, H, -100, None, None, 100, (Limit.SOC_WINDOW,)),
    # battery lost: nothing can move
    (-1000, 700, 0, None, None, 1.0, 0, None, None, 700, (Limit.DEVICE_UNAVAILABLE,)),
    # target above the site's draw, battery full: curtail PV to reach it
    (0, 500, 4000, bat(90), None, 1.0, 0, 500, None, 0, ()),
    # heat pump blocked to reach a low target when the battery is at its rating
    (
        -5000,
        1000,
        0,
        bat(50),
        hp(normal=1000),
        1.0,
        5000,
        None,
        SgReady.BLOCKED,
        -4000,
        (Limit.DEVICE_RATING,),
    ),
    # heat pump boosted to reach a high target when the battery is at its rating
    (
        7000,
        1000,
        0,
        bat(50),
        hp(normal=0, boost=2500),
        1.0,
        -3500,
        None,
        SgReady.RECOMMENDED,
        7000,
        (),
    ),
    # same, but the house is at the top of its band: comfort band clamps
    (
        9000,
        1000,
        0,
        bat(50),
        hp(normal=0, boost=2500, indoor=23.5),
        1.0,
        -5000,
        None,
        SgReady.NORMAL,
        6000,
        (Limit.DEVICE_RATING, Limit.COMFORT_BAND),
    ),
    # target reachable by the battery: heat pump left alone
    (0, 1000, 0, bat(50), hp(normal=1000), 1.0, 2000, None, SgReady.NORMAL, 0, ()),
]


@pytest.mark.parametrize(
    (
        "target",
        "load",
        "pv",
        "battery",
        "heat_pump",
        "cycle_s",
        "battery_w",
        "pv_limit",
        "sg",
        "grid",
        "clamped",
    ),
    FOLLOW,
)
def test_follow(
    target, load, pv, battery, heat_pump, cycle_s, battery_w, pv_limit, sg, grid, clamped
):
    plan = follow(target, SiteInputs(load, pv, battery, heat_pump), LIM, cycle_s=cycle_s)
    assert plan.battery_w == pytest.approx(battery_w)
    assert plan.pv_limit_w == (None if pv_limit is None else pytest.approx(pv_limit))
    assert plan.sg_ready == sg
    assert plan.grid_w == pytest.approx(grid)
    assert plan.clamped_by == clamped


def test_follow_refuses_non_finite_targets():
    with pytest.raises(ValueError, match="finite"):
        follow(math.nan, SiteInputs(0.0), LIM)


# --- properties: no plan ever breaks a hard limit ----------------------------------------
sites = st.builds(
    SiteInputs,
    load_w=st.floats(0, 20_000),
    pv_available_w=st.floats(0, 15_000),
    battery=st.none() | st.builds(bat, st.floats(0, 100), st.floats(0, 8000), st.floats(0, 8000)),
    heat_pump=st.none() | st.builds(hp, st.floats(0, 3000), st.floats(0, 4000), st.floats(15, 27)),
)


def assert_within_hard_limits(plan, inputs: SiteInputs, cycle_s: float) -> None:
    lo, hi, _, _ = battery_window(inputs.battery, LIM, cycle_s)
    assert lo - 1e-6 <= plan.battery_w <= hi + 1e-6
    assert plan.grid_w >= -LIM.grid_export_w - 1e-6  # PV can always be curtailed
    if plan.pv_limit_w is not None:
        assert 0 <= plan.pv_limit_w <= inputs.pv_available_w + 1e-6
    if inputs.heat_pump is not None:
        if inputs.heat_pump.indoor_c <= LIM.comfort_min_c:
            assert plan.sg_ready != SgReady.BLOCKED
        if inputs.heat_pump.indoor_c >= LIM.comfort_max_c:
            assert plan.sg_ready not in (SgReady.RECOMMENDED, SgReady.FORCED)


@given(inputs=sites, target=st.floats(-30_000, 30_000), cycle_s=st.sampled_from([1.0, 60.0, H]))
def test_follow_never_breaks_a_hard_limit(inputs, target, cycle_s):
    plan = follow(target, inputs, LIM, cycle_s)
    assert_within_hard_limits(plan, inputs, cycle_s)
    # grid power is consistent with what is commanded
    pv = inputs.pv_available_w if plan.pv_limit_w is None else plan.pv_limit_w
    from edge.control.plan import heat_pump_power

    expected = inputs.load_w + heat_pump_power(inputs.heat_pump, plan.sg_ready) - pv
    assert plan.grid_w == pytest.approx(expected - plan.battery_w, abs=1e-6)


@given(inputs=sites, cycle_s=st.sampled_from([1.0, 60.0, H]))
def test_fallback_never_breaks_a_hard_limit(inputs, cycle_s):
    assert_within_hard_limits(fallback(inputs, LIM, cycle_s), inputs, cycle_s)


@given(inputs=sites, limit=st.floats(0, 20_000), cycle_s=st.sampled_from([1.0, 60.0, H]))
def test_peak_shaving_never_breaks_a_hard_limit(inputs, limit, cycle_s):
    plan = peak_shaving(inputs, LIM, limit, cycle_s)
    assert_within_hard_limits(plan, inputs, cycle_s)
    assert plan.battery_w <= 0 or plan.grid_w >= min(limit, LIM.grid_import_w) - 1e-6
    assert plan.battery_w >= 0 or plan.grid_w <= 1e-6  # charges from a surplus, not the grid
