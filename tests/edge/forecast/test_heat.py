"""The house: thermostat duty on a known model, the model fit, the outdoor forecast."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.control.plan import SiteLimits
from edge.control.thermal import ThermalModel
from edge.forecast.baseline import simulate
from edge.forecast.heat import (
    HouseParams,
    fit_house,
    forecast_outdoor,
    indoor_error_k,
    learn_offset_w,
)
from edge.forecast.history import SLOT_S

from .crafted import T0, history

LIM = SiteLimits(grid_import_w=17_250, grid_export_w=10_000)
MODEL = ThermalModel(tau_s=30 * 3600.0, gain_k_per_w=0.025)  # 1 kW holds 25 K above outside


def _house(**kw) -> HouseParams:
    return HouseParams(
        setpoint_c=21.0, boost_k=2.0, on_w=1000.0, hysteresis_k=0.4, model=MODEL, **kw
    )


def _run(outdoor_c: float, days: float = 2.0, indoor_c: float = 21.0, **kw):
    n = int(days * 96)
    return simulate(
        limits=LIM,
        durations_s=np.full(n, float(SLOT_S)),
        load_w=np.zeros(n),
        pv_sub_w=np.zeros((n, 3)),
        outdoor_sub_c=np.full((n, 3), outdoor_c),
        battery=None,
        soc_pct=None,
        house=_house(**kw),
        indoor_c=indoor_c,
        hp_on=False,
    )


# outdoor temperature -> the thermostat's duty: (setpoint - outdoor) / (gain x on power)
DUTY = [(-4.0, 1.0), (1.0, 0.8), (6.0, 0.6), (11.0, 0.4), (16.0, 0.2), (21.0, 0.0), (25.0, 0.0)]


@pytest.mark.parametrize(("outdoor_c", "duty"), DUTY)
def test_thermostat_duty_on_a_known_model(outdoor_c, duty):
    path = _run(outdoor_c)
    second_day = slice(96, 192)
    assert path.heat_pump_w[second_day].mean() == pytest.approx(1000.0 * duty, abs=30.0)
    # the thermostat holds the house within its hysteresis (plus a step's overshoot)
    if 0 < duty < 1:
        assert path.indoor_min_c[second_day].min() > 21.0 - 0.4 - 0.1
        assert path.indoor_max_c[second_day].max() < 21.0 + 0.4 + 0.1


def test_an_offset_is_heat_the_heat_pump_need_not_make():
    plain = _run(11.0)
    helped = _run(11.0, offset_w=200.0)  # people and appliances: 5 K of the 10 K needed
    assert plain.heat_pump_w[96:].mean() == pytest.approx(400.0, abs=30.0)
    assert helped.heat_pump_w[96:].mean() == pytest.approx(200.0, abs=30.0)


def test_the_electric_capacity_of_the_house():
    # 30 h / 0.025 K/W = 4.32e6 J/K, 1200 Wh of heat pump energy per kelvin
    assert _house().capacity_wh_per_k == pytest.approx(1200.0)


def _house_history(model: ThermalModel, offset_w: float, days: int = 5, gap_every: int = 0):
    """Slots of a house on its thermostat under a daily outdoor swing, exact steps (the
    indoor reading missing in every ``gap_every``-th slot)."""
    a = math.exp(-SLOT_S / model.tau_s)
    state = {"t": 21.0, "on": False}
    slots: dict[float, dict] = {}

    def values(ts: float) -> dict:
        if ts in slots:
            return slots[ts]
        out = 5.0 + 4.0 * math.sin(2 * math.pi * ts / 86400)
        t = state["t"]
        if t < 20.6:
            state["on"] = True
        elif t > 21.4:
            state["on"] = False
        p = 1000.0 if state["on"] else 0.0
        state["t"] = out + a * (t - out) + (1 - a) * model.gain_k_per_w * (p + offset_w)
        gap = gap_every and int(ts // SLOT_S) % gap_every == 0
        slots[ts] = {"indoor_c": None if gap else t, "outdoor_c": out, "heat_pump_w": p}
        return slots[ts]

    return history(values, days, T0 + days * 86400)


@pytest.mark.parametrize(
    ("tau_h", "gain", "offset_w"), [(30.0, 0.025, 0.0), (18.0, 0.014, 500.0), (60.0, 0.04, 150.0)]
)
def test_the_house_model_is_fitted_with_its_offset(tau_h, gain, offset_w):
    model = ThermalModel(tau_s=tau_h * 3600, gain_k_per_w=gain)
    h = _house_history(model, offset_w)
    fitted = fit_house(h, h.latest_slot() + 1)
    assert fitted is not None
    got, offset = fitted
    assert got.tau_s == pytest.approx(model.tau_s, rel=0.01)
    assert got.gain_k_per_w == pytest.approx(gain, rel=0.01)
    assert offset == pytest.approx(offset_w, abs=5.0)
    # and the agent's model (no offset term) gets its offset from the same data
    assert learn_offset_w(h, h.latest_slot() + 1, model) == pytest.approx(offset_w, abs=5.0)


def test_no_fit_without_the_heat_pump_moving():
    flat = history(lambda t: {"indoor_c": 21.0, "outdoor_c": 5.0, "heat_pump_w": 800.0}, 4, T0)
    assert fit_house(flat, flat.latest_slot() + 1) is None
    assert fit_house(history(lambda t: {}, 0, T0), 0) is None


def _outdoor(t: float) -> dict:
    return {"outdoor_c": 8.0 + 4.0 * math.sin(2 * math.pi * ((t + 450) % 86400 - 9 * 3600) / 86400)}


# how much warmer than the profile it is now -> lead (h) -> departure forecast (K)
@pytest.mark.parametrize(
    ("warmer_now", "lead_h", "departure"),
    [(None, 3.0, 0.0), (3.0, 0.0, 3.0), (3.0, 6.0, 3.0 * math.exp(-1)), (3.0, 23.0, 0.06)],
)
def test_outdoor_temperature_is_yesterday_plus_todays_departure(warmer_now, lead_h, departure):
    now = T0 + 4 * 86400
    h = history(_outdoor, 4, now)
    slots = np.arange(int(now // SLOT_S), int(now // SLOT_S) + 96)
    profile = np.array([_outdoor(s * SLOT_S)["outdoor_c"] for s in slots])
    latest = _outdoor((h.latest_slot()) * SLOT_S)["outdoor_c"]
    current = None if warmer_now is None else latest + warmer_now
    got = forecast_outdoor(h, slots, now, current)
    k = int(lead_h * 4)
    assert got[k] - profile[k] == pytest.approx(departure, abs=0.08)


# --- how wrong the model is, per lead --------------------------------------------------------

TRUE = ThermalModel(tau_s=20 * 3600.0, gain_k_per_w=0.02)


def _errors(assumed: ThermalModel, days: int, n: int = 24):
    h = _house_history(TRUE, 300.0, days=days) if days else history(lambda t: {}, 0, T0)
    return indoor_error_k(h, h.latest_slot() + 1, assumed, 300.0, n)


# history days, model assumed -> colder than forecast one slot and 16 slots ahead: (lo, hi) K
ERROR_CASES = [
    (0, TRUE, (0.3, 0.3), (0.3, 0.3)),  # nothing measured: the default
    (4, TRUE, (0.0, 0.07), (0.0, 0.07)),  # the right model: the default's weight only
    (1, TRUE, (0.1, 0.2), (0.1, 0.2)),  # a day measured weighs as much as the default
    # a house that loses heat twice as fast as its model says: colder, more so further ahead
    (4, ThermalModel(tau_s=40 * 3600.0, gain_k_per_w=0.04), (0.07, 0.2), (0.5, 3.0)),
]


@pytest.mark.parametrize(("days", "assumed", "lead_1", "lead_16"), ERROR_CASES)
def test_the_indoor_error_is_the_models_own_hindcast(days, assumed, lead_1, lead_16):
    colder, warmer = _errors(assumed, days)
    assert lead_1[0] <= colder[0] <= lead_1[1]
    assert lead_16[0] <= colder[15] <= lead_16[1]
    # a running extreme, the last measured lead held beyond
    for e in (colder, warmer):
        assert np.all(np.diff(e) >= 0)
        assert np.all(e[15:] == e[15])


def test_indoor_error_ignores_unmeasured_slots():
    h = _house_history(TRUE, 300.0, days=4, gap_every=7)
    colder, warmer = indoor_error_k(h, h.latest_slot() + 1, TRUE, 300.0, 4)
    assert np.all(np.isfinite(colder))
    assert np.all(np.isfinite(warmer))
    assert colder[3] <= 0.1
