"""The envelope: table checks of its parts, and properties over many generated sites."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge.control.plan import Battery, SiteLimits
from edge.control.thermal import ThermalModel
from edge.forecast import Forecaster, ForecastSettings, HeatPumpNow, SiteNow
from edge.forecast.envelope import front_loaded, heat_pump_draw_range, heat_pump_expected
from edge.forecast.history import SLOT_S
from edge.forecast.pv import slot_clear_sky
from protocols.messages import FlexEnvelope, decode, encode

from .crafted import BRUSSELS, T0, rows

# power per slot, reserve at each slot's end (Wh) -> the front-loaded power (W), 1 h slots
FRONT = [
    ([1000, 1000, 1000], [5000, 5000, 5000], [1000, 1000, 1000]),  # plenty: all of it
    ([1000, 1000, 1000], [1500, 1500, 1500], [1000, 500, 0]),  # used up in the second
    ([1000, 1000, 1000], [5000, 800, 5000], [800, 0, 1000]),  # a later pinch binds earlier
    ([1000, 0, 1000], [3000, 3000, 3000], [1000, 0, 1000]),  # nothing to shed: nothing used
    ([500, 500], [-100, 2000], [0, 500]),  # outside the band already: nothing then
]


@pytest.mark.parametrize(("power", "reserve", "expected"), FRONT)
def test_front_loaded(power, reserve, expected):
    got = front_loaded(np.array(power, float), np.array(reserve, float), hours=1.0)
    np.testing.assert_allclose(got, expected)
    ceiling = np.minimum.accumulate(np.maximum(reserve, 0)[::-1])[::-1]
    assert np.all(np.cumsum(got) <= ceiling + 1e-9)  # any use stays within every reserve


def test_heat_pump_expected_keeps_the_known_phase_then_the_duty():
    on_off = np.tile([1000.0] * 4 + [0.0] * 4, 12)  # two-hour cycles
    got = heat_pump_expected(on_off)
    np.testing.assert_allclose(got[:4], on_off[:4])
    assert np.all(np.abs(got[8:-8] - 500.0) < 40)  # about the duty, 50 %


ON, OFF = 1000.0, 0.0
# simulated draw per slot (slot 0 under way) -> (lowest, highest) draw it may have; the first
# 4 slots are the trusted phase, beyond it any phase within +-8 slots
DRAW_RANGE = [
    # runs throughout: its draw is sure everywhere
    ([ON] * 20, [ON] * 20, [ON] * 20),
    # off now, a start simulated in slot 2: not sure (starts slip), though it may run from
    # slot 1 (a switch moved one slot early); beyond, the off slots are within reach
    ([OFF, OFF, ON, ON] + [ON] * 6, [OFF] * 10, [OFF, ON, ON, ON] + [ON] * 6),
    # on now, a stop simulated after slot 2: sure until a slot before it; off, then a start
    # in slot 3 within the trusted phase, is not sure
    ([ON, ON, ON, OFF, ON] + [ON] * 5, [ON, ON, OFF, OFF] + [OFF] * 6, [ON] * 10),
    # a two-hour cycle: it may stop a slot early, nothing is sure past the trusted phase,
    # and the draw always may be full
    (
        [ON] * 4 + [OFF] * 8 + [ON] * 8,
        [ON, ON, ON, OFF] + [OFF] * 16,
        [ON, ON, ON, ON] + [ON] * 16,
    ),
]


@pytest.mark.parametrize(("draw", "lowest", "highest"), DRAW_RANGE)
def test_heat_pump_draw_range_over_the_switch_times_it_may_have(draw, lowest, highest):
    got_lo, got_hi = heat_pump_draw_range(np.array(draw))
    np.testing.assert_allclose(got_lo, lowest)
    np.testing.assert_allclose(got_hi, highest)


# --- properties over generated sites ---------------------------------------------------------


def _history_rows(days: int, now: float, load: float, pv_peak: float, hp: float) -> list[dict]:
    def values(t: float) -> dict:
        hour = (t % 86400) / 3600
        pv = pv_peak * 0.6 * slot_clear_sky(t, *BRUSSELS).item()
        on = hp if int(hour) % 3 == 0 else 0.0
        return {
            "load_w": load * (1 + 0.6 * math.sin(2 * math.pi * (hour - 13) / 24)),
            "load_std_w": 0.3 * load,
            "pv_w": pv,
            "pv_available_w": pv,
            "heat_pump_w": on if hp else None,
            "outdoor_c": 6 + 4 * math.sin(2 * math.pi * (hour - 9) / 24),
            "indoor_c": 20.6 + 0.8 * ((hour % 3) / 3) if hp else None,
            "grid_w": load - pv,
            "baseline_grid_w": load - pv,
            "cloud_share": 0.0,
        }

    return rows(values, now - days * 86400, now)


sites = st.fixed_dictionaries(
    {
        "days": st.integers(0, 4),
        "hour": st.integers(0, 95),
        "late_s": st.sampled_from([0.0, 30.0, 400.0]),
        "load": st.floats(100, 3000),
        "pv_peak": st.floats(0, 15_000),
        "hp": st.sampled_from([0.0, 800.0, 2500.0]),
        "capacity": st.one_of(st.none(), st.floats(2000, 30_000)),
        "rating": st.floats(1000, 10_000),
        "soc": st.floats(0, 100),
        "import_w": st.floats(3000, 40_000),
        "export_w": st.floats(0, 20_000),
        "location": st.booleans(),
        "pv_present": st.booleans(),
    }
)


def _envelope(p: dict) -> tuple[FlexEnvelope, Forecaster, SiteLimits]:
    now = T0 + 10 * 86400 + p["hour"] * SLOT_S + p["late_s"]
    settings_ = ForecastSettings(*BRUSSELS) if p["location"] else ForecastSettings()
    f = Forecaster("site-1", settings_)
    f.history.restore(_history_rows(p["days"], now - p["late_s"], p["load"], p["pv_peak"], p["hp"]))
    limits = SiteLimits(grid_import_w=p["import_w"], grid_export_w=p["export_w"])
    battery = None
    if p["capacity"] is not None:
        battery = Battery(p["soc"], p["capacity"], p["rating"], p["rating"])
    hp = None
    if p["hp"]:
        hp = HeatPumpNow(
            indoor_c=20.8, power_w=p["hp"], setpoint_c=21.0, boost_k=2.0, rated_w=p["hp"]
        )
    site = SiteNow(
        battery=battery,
        heat_pump=hp,
        pv=p["pv_present"],
        outdoor_c=7.0,
        thermal=ThermalModel(),
    )
    return f.envelope(now, site, limits, seq=7), f, limits


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(sites)
def test_envelope_properties(p):
    env, f, limits = _envelope(p)
    assert decode(encode(env)) == env  # validates, and round-trips
    assert len(env.baseline_w) == 96
    assert env.start_ts % SLOT_S == 0
    assert env.start_ts - SLOT_S <= env.ts <= env.start_ts + 90
    last = f.last
    tol = 1e-6
    storage, power_only = env.storage, env.power_only
    assert (storage is None) == (p["capacity"] is None)
    assert (power_only is None) == (not p["pv_present"] and not p["hp"])
    base = np.asarray(env.baseline_w)
    up = np.zeros(96)
    down = np.zeros(96)
    up_o = np.zeros(96)
    down_o = np.zeros(96)
    if storage is not None:
        for b in (storage, storage.optimistic):
            assert all(lo <= 0 <= hi for lo, hi in zip(b.p_min_w, b.p_max_w, strict=True))
            assert all(lo <= 0 <= hi for lo, hi in zip(b.e_min_wh, b.e_max_wh, strict=True))
        o = storage.optimistic
        assert np.all(np.asarray(o.p_min_w) <= np.asarray(storage.p_min_w) + tol)
        assert np.all(np.asarray(o.p_max_w) >= np.asarray(storage.p_max_w) - tol)
        assert np.all(np.asarray(o.e_min_wh) <= np.asarray(storage.e_min_wh) + tol)
        assert np.all(np.asarray(o.e_max_wh) >= np.asarray(storage.e_max_wh) - tol)
        # the low path never above the nominal, the nominal never above the high path
        assert np.all(last.low.stored_wh <= last.nominal.stored_wh + 1e-6)
        assert np.all(last.nominal.stored_wh <= last.high.stored_wh + 1e-6)
        # energy bounds within what the battery can hold
        cap = p["capacity"]
        width = np.asarray(storage.e_max_wh) - np.asarray(storage.e_min_wh)
        assert np.all(width <= cap + tol)
        assert np.all(np.asarray(o.e_max_wh) - np.asarray(o.e_min_wh) <= cap + tol)
        assert np.all(last.nominal.stored_wh >= -tol)
        assert np.all(last.nominal.stored_wh <= cap + tol)
        assert storage.eta_charge == storage.eta_discharge == 0.95
        up, down = np.asarray(storage.p_max_w), np.asarray(storage.p_min_w)
        up_o, down_o = np.asarray(o.p_max_w), np.asarray(o.p_min_w)
    if power_only is not None:
        o = power_only.optimistic
        assert np.all(np.asarray(o.p_min_w) <= np.asarray(power_only.p_min_w) + tol)
        assert np.all(np.asarray(o.p_max_w) >= np.asarray(power_only.p_max_w) - tol)
        up, down = up + np.asarray(power_only.p_max_w), down + np.asarray(power_only.p_min_w)
        if last.house_path is not None:
            # any use of the guaranteed shed keeps the house above the band's floor by the
            # reading's margin and the model's own error at each lead
            cold_k = f.settings.comfort_margin_k + last.indoor_colder_k
            floor_c = limits.comfort_min_c + cold_k
            reserve_wh = (last.house_path.indoor_min_c - floor_c) * last.house.capacity_wh_per_k
            ceiling = np.minimum.accumulate(np.maximum(reserve_wh, 0.0)[::-1])[::-1]
            used_wh = np.cumsum(-np.asarray(power_only.p_min_w) * SLOT_S / 3600.0)
            assert np.all(used_wh <= ceiling + 1.0)
        up_o, down_o = up_o + np.asarray(o.p_max_w), down_o + np.asarray(o.p_min_w)
    # storage and power-only together stay within the grid connection (0.1 W: rounding)
    assert np.all(base + up <= np.maximum(limits.grid_import_w, base) + 0.2)
    assert np.all(base + up_o <= np.maximum(limits.grid_import_w, base) + 0.2)
    assert np.all(base + down >= np.minimum(-limits.grid_export_w, base) - 0.2)
    assert np.all(base + down_o >= np.minimum(-limits.grid_export_w, base) - 0.2)
