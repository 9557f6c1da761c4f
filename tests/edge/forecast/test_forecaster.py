"""The forecaster as the agent uses it: observe every cycle, an envelope per quarter hour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.config import EdgeConfig
from edge.control.plan import Battery, SiteLimits
from edge.control.thermal import ThermalModel
from edge.forecast import Forecaster, ForecastSettings, HeatPumpNow, SiteNow
from edge.forecast.history import SLOT_S
from edge.forecast.pv import clear_sky_fraction
from edge.store import EdgeStore
from protocols.clock import ManualClock
from protocols.messages import decode, encode

from .crafted import BRUSSELS, T0

LIMITS = SiteLimits(grid_import_w=17_250, grid_export_w=10_000)
SETTINGS = ForecastSettings(*BRUSSELS)


def cycles(f: Forecaster, start: float, seconds: float, step: float = 60.0) -> None:
    """A site's measurements, as the agent would pass them every cycle."""
    t = start
    while t < start + seconds:
        hour = (t % 86400) / 3600
        pv = 5000 * 0.6 * float(clear_sky_fraction(np.array([t]), *BRUSSELS)[0])
        load = 400 + 300 * math.sin(2 * math.pi * (hour - 13) / 24)
        hp = 1000.0 if int(hour * 2) % 3 == 0 else 0.0
        f.observe(
            t,
            load_w=load,
            pv_w=pv,
            pv_available_w=pv,
            heat_pump_w=hp,
            outdoor_c=8 + 4 * math.sin(2 * math.pi * (hour - 9) / 24),
            indoor_c=21.0 + (0.3 if hp else -0.3),
            battery_w=0.0,
            soc_pct=50.0,
            grid_w=load + hp - pv,
            baseline_grid_w=load + hp - pv,
            following_cloud=False,
            battery_setpoint_w=0.0,
            max_charge_w=5000.0,
            max_discharge_w=5000.0,
        )
        t += step


def site(soc: float = 50.0) -> SiteNow:
    return SiteNow(
        battery=Battery(soc_pct=soc, capacity_wh=10_000, max_charge_w=5000, max_discharge_w=5000),
        heat_pump=HeatPumpNow(
            indoor_c=21.0, power_w=0.0, setpoint_c=21.0, boost_k=2.0, rated_w=1000.0
        ),
        pv=True,
        pv_rated_w=5000.0,
        outdoor_c=8.0,
        thermal=ThermalModel(),
    )


@pytest.fixture(scope="module")
def fed() -> Forecaster:
    f = Forecaster("site-7", SETTINGS)
    cycles(f, T0, 3 * 86400)
    return f


# now (seconds after a quarter hour) -> where the envelope starts (quarter hours from that one)
@pytest.mark.parametrize(("late_s", "start"), [(0.0, 0), (30.0, 0), (90.0, 0), (91.0, 1), (899, 1)])
def test_the_envelope_starts_at_the_boundary_it_was_asked_at_or_the_next(fed, late_s, start):
    boundary = T0 + 3 * 86400
    env = fed.envelope(boundary + late_s, site(), LIMITS, seq=1)
    assert env.start_ts == boundary + start * SLOT_S
    assert env.ts == boundary + late_s
    assert len(env.baseline_w) == 96
    assert decode(encode(env)) == env


def test_the_same_inputs_give_the_same_envelope(fed):
    now = T0 + 3 * 86400
    first = encode(fed.envelope(now, site(), LIMITS, seq=3))
    again = encode(fed.envelope(now, site(), LIMITS, seq=3))
    assert first == again  # time is the agent's `now`, nothing else


def test_what_the_agent_can_do_shapes_the_envelope(fed):
    now = T0 + 3 * 86400
    full = fed.envelope(now, site(), LIMITS, seq=1)
    assert full.storage is not None
    assert full.power_only is not None
    no_battery = fed.envelope(now, SiteNow(pv=False, outdoor_c=8.0), LIMITS, seq=2)
    assert no_battery.storage is None
    assert no_battery.power_only is None  # no PV to curtail, no heat pump
    lost = SiteNow(battery=site().battery, degraded="meter lost")
    degraded = fed.envelope(now, lost, LIMITS, seq=3)
    assert degraded.storage is None
    assert degraded.power_only is None
    assert degraded.reason == "meter lost"
    assert degraded.baseline_w


def test_a_restart_keeps_the_history_and_the_filed_forecasts(tmp_path):
    clock = ManualClock(T0)
    path = tmp_path / "edge.db"
    with EdgeStore(path, clock) as store:
        f = Forecaster("site-7", SETTINGS, store=store)
        cycles(f, T0, 2 * 86400 + 60)
        now = T0 + 2 * 86400 + 60
        env = f.envelope(now, site(), LIMITS, seq=1)
        assert len(store.forecast_slots()) == 2 * 96
        assert [ts for ts, _ in store.issued_forecasts()] == [T0 + 2 * 86400]
    with EdgeStore(path, clock) as store:
        again = Forecaster("site-7", SETTINGS, store=store)
        assert again.history.latest_slot() == f.history.latest_slot()
        assert len(again.errors.pending) == 1
        slots = np.arange(int(T0 // SLOT_S), f.history.latest_slot() + 1)
        np.testing.assert_array_equal(
            again.history.gather("load_w", slots), f.history.gather("load_w", slots)
        )
        # the open slot's few cycles are gone with the process; the forecast is the same
        later = again.envelope(now, site(), LIMITS, seq=1)
    assert later.baseline_w == pytest.approx(env.baseline_w, abs=20)


def test_old_history_is_pruned(tmp_path):
    clock = ManualClock(T0)
    settings = ForecastSettings(*BRUSSELS, history_days=2)
    with EdgeStore(tmp_path / "edge.db", clock) as store:
        f = Forecaster("site-7", settings, store=store)
        cycles(f, T0, 5 * 86400, step=300.0)
        oldest = store.forecast_slots()[0]["slot_ts"]
    # history_days + 1 kept, pruned hourly
    assert oldest >= T0 + 5 * 86400 - 3 * 86400 - 2 * 3600


def test_settings_from_the_config():
    config = EdgeConfig.from_dict(
        {
            "site": {"id": "s-1", "latitude": 50.5, "longitude": 4.5},
            "limits": {"grid_import_w": 10_000, "grid_export_w": 5000},
            "forecast": {"eta_charge": 0.9, "horizon_h": 12, "pv_peak_w": 4000},
            "devices": [{"id": "m", "host": "h", "kind": "meter"}],
        }
    )
    s = ForecastSettings.from_config(config)
    assert s.location == (50.5, 4.5)
    assert (s.eta_charge, s.eta_discharge, s.horizon_h, s.pv_peak_w) == (0.9, 0.95, 12, 4000)
    assert s.local_offset_h == pytest.approx(1.3)
    f = Forecaster("s-1", s)
    env = f.envelope(T0, site(), LIMITS, seq=0)
    assert len(env.baseline_w) == 48
    assert env.storage.eta_charge == 0.9
