"""Pure physics: table-driven, no sockets."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim.physics import battery, house
from firmware_sim.physics.site_model import FleetPhysics
from firmware_sim.physics.sun import Cloudiness, clear_sky_fraction

NOON_JUNE = 1717243200.0  # 2024-06-01 12:00 UTC
LAT, LON = 50.85, 4.35  # Brussels


@pytest.mark.parametrize(
    ("t", "lo", "hi"),
    [
        (NOON_JUNE - 20 * 60, 0.75, 1.0),  # solar noon in June: high sun
        (NOON_JUNE - 12 * 3600, 0.0, 0.0),  # midnight: dark
        (NOON_JUNE - 6 * 3600, 0.05, 0.4),  # 06:00 UTC: low morning sun
        (NOON_JUNE + 183 * 86400, 0.2, 0.45),  # noon in early December: low sun
    ],
)
def test_clear_sky_follows_the_sun(t, lo, hi):
    f = float(clear_sky_fraction(t, LAT, LON))
    assert lo <= f <= hi


def test_cloudiness_is_seeded_and_bounded():
    a, b, c = Cloudiness(5, 50), Cloudiness(5, 50), Cloudiness(6, 50)
    ts = [NOON_JUNE + k * 97.0 for k in range(200)]
    va = np.array([a.value(t) for t in ts])
    vb = np.array([b.value(t) for t in ts])
    vc = np.array([c.value(t) for t in ts])
    assert np.array_equal(va, vb)
    assert not np.array_equal(va, vc)
    assert va.min() >= 0.0
    assert va.max() <= 1.0
    assert va.std() > 0.01  # clouds do pass


@pytest.mark.parametrize(
    ("soc0", "p", "dt", "soc1", "p1"),
    [
        # discharging 1000 W for 1 h at eta 0.95 draws 1000/0.95 Wh
        (5000.0, 1000.0, 3600.0, 5000.0 - 1000.0 / 0.95, 1000.0),
        # charging 1000 W for 1 h stores 950 Wh
        (5000.0, -1000.0, 3600.0, 5950.0, -1000.0),
        # nearly empty: the power is cut so energy stays >= 0
        (100.0, 1000.0, 3600.0, 0.0, 100.0 * 0.95),
        # nearly full: charge power cut at full
        (9950.0, -1000.0, 3600.0, 10000.0, -50.0 / 0.95),
        (5000.0, 0.0, 3600.0, 5000.0, 0.0),
    ],
)
def test_soc_integration_with_efficiency(soc0, p, dt, soc1, p1):
    soc, pa = battery.integrate(np.array([soc0]), np.array([p]), dt, 10000.0, 0.95, 0.95)
    assert soc[0] == pytest.approx(soc1)
    assert pa[0] == pytest.approx(p1)


@pytest.mark.parametrize(
    ("soc_frac", "charge_ok", "discharge_ok"),
    [(0.0, True, False), (0.5, True, True), (1.0, False, True), (0.95, True, True)],
)
def test_bms_stops_at_empty_and_full(soc_frac, charge_ok, discharge_ok):
    cha, dis = battery.bms_limits(np.array([soc_frac * 10000.0]), 10000.0, 5000.0, 5000.0)
    assert (cha[0] > 0) == charge_ok
    assert (dis[0] > 0) == discharge_ok
    if soc_frac == 0.95:
        assert 0 < cha[0] < 5000.0  # tapering near full


def test_ramp_limits_the_rate():
    assert battery.ramp(0.0, 3000.0, 1000.0, 1.0) == 1000.0
    assert battery.ramp(0.0, -3000.0, 1000.0, 2.0) == -2000.0
    assert battery.ramp(500.0, 800.0, 1000.0, 1.0) == 800.0


def test_battery_runs_empty_and_the_device_stops_it():
    ph = FleetPhysics(seed=3, n=2, t0=NOON_JUNE)
    ph.ctl.bat_lo_w[:] = ph.p.bat_max_w  # force full discharge: window [max, max]
    ph.ctl.bat_hi_w[:] = ph.p.bat_max_w
    ph.advance_to(NOON_JUNE + 6 * 3600)
    assert np.all(ph.soc_pct < 0.5)
    assert np.all(np.abs(ph.bat_w) < 0.05 * ph.p.bat_max_w)
    assert np.all(ph.soc_wh >= 0)


@pytest.mark.parametrize(
    ("t_in", "t_out", "q", "hours", "expect"),
    [
        (20.0, 0.0, 0.0, 10.0, "cools"),
        (20.0, 20.0, 0.0, 10.0, "steady"),
        (18.0, 0.0, 8000.0, 10.0, "warms"),
    ],
)
def test_house_temperature(t_in, t_out, q, hours, expect):
    t1 = float(house.house_step(t_in, t_out, q, hours * 3600, 200.0, 2e7))
    if expect == "cools":
        assert t_out < t1 < t_in
    elif expect == "steady":
        assert t1 == pytest.approx(t_in)
    else:
        assert t1 > t_in
        assert t1 < t_out + q / 200.0  # never past the equilibrium


@pytest.mark.parametrize(
    ("sg", "t_in", "was_on", "on"),
    [
        (1, 15.0, False, False),  # blocked even when cold
        (2, 15.0, False, True),  # thermostat
        (2, 23.0, True, False),
        (3, 22.0, False, True),  # boosted setpoint 21 + 2
        (4, 23.0, False, True),  # forced on up to setpoint + 3
        (4, 24.5, True, False),
    ],
)
def test_heat_pump_sg_ready(sg, t_in, was_on, on):
    assert bool(house.heat_pump_demand(t_in, was_on, sg, 21.0, 2.0, 3.0)) is on


def test_same_seed_same_run_and_power_balance():
    a, b = FleetPhysics(9, 20, NOON_JUNE), FleetPhysics(9, 20, NOON_JUNE)
    for k in range(1, 40):
        a.advance_to(NOON_JUNE + k * 37.0)
    b.advance_to(NOON_JUNE + 39 * 37.0)  # different stepping, same clock times at the end
    assert np.allclose(a.load_w, b.load_w)
    assert np.allclose(a.pv_w, b.pv_w)
    assert np.allclose(a.grid_w, a.load_w + a.hp_w - a.pv_w - a.bat_w)
