"""Flexibility and the thermal model, as tables."""

from __future__ import annotations

import numpy as np
import pytest

from edge.control.flexibility import flexibility
from edge.control.plan import Battery, HeatPump, SiteInputs, SiteLimits, follow
from edge.control.thermal import ThermalModel, fit_thermal_model, time_in_band

LIM = SiteLimits(
    grid_import_w=10_000,
    grid_export_w=5_000,
    soc_min_pct=10,
    soc_max_pct=90,
    comfort_min_c=19.5,
    comfort_max_c=23.0,
)
BAT = Battery(soc_pct=50, capacity_wh=10_000, max_charge_w=4000, max_discharge_w=4000)


# load, pv, battery -> p_min, p_max, e_absorb, e_deliver
@pytest.mark.parametrize(
    ("load", "pv", "battery", "p_min", "p_max", "absorb", "deliver"),
    [
        (500, 0, BAT, -3500, 4500, 4000, 4000),
        (500, 3000, BAT, -5000, 4500, 4000, 4000),  # PV + discharge capped by export limit
        (8000, 0, BAT, 4000, 10_000, 4000, 4000),  # charging capped by the fuse
        (500, 0, None, 500, 500, 0, 0),
        (500, 2000, None, -1500, 500, 0, 0),  # curtailing PV is the only flexibility
        (500, 0, Battery(10, 10_000, 4000, 4000), 500, 4500, 8000, 0),  # empty battery
    ],
)
def test_flexibility_range_and_energy(load, pv, battery, p_min, p_max, absorb, deliver):
    flex = flexibility(SiteInputs(load, pv, battery), LIM)
    assert (flex.p_min_w, flex.p_max_w) == pytest.approx((p_min, p_max))
    assert (flex.e_absorb_wh, flex.e_deliver_wh) == pytest.approx((absorb, deliver))
    assert flex.hp_up_w is None


@pytest.mark.parametrize("target", [-6000, -3500, 0, 2000, 4500, 9000])
def test_the_range_offered_is_the_range_a_dispatch_reaches(target):
    inputs = SiteInputs(500, 1500, BAT, HeatPump(800, 2000, 21.0))
    flex = flexibility(inputs, LIM)
    plan = follow(target, inputs, LIM)
    reachable = min(max(target, flex.p_min_w), flex.p_max_w)
    assert plan.grid_w == pytest.approx(reachable, abs=1.0)
    assert (plan.clamped_by == ()) == (flex.p_min_w <= target <= flex.p_max_w)


def test_heat_pump_flexibility_runs_out_by_time():
    model = ThermalModel(tau_s=20 * 3600, gain_k_per_w=0.01)
    inputs = SiteInputs(500, 0, None, HeatPump(normal_w=1000, boost_w=2000, indoor_c=21.0))
    flex = flexibility(inputs, LIM, outdoor_c=5.0, thermal=model)
    assert flex.hp_down_w == 1000
    assert flex.hp_up_w == 1000
    # blocked: cools from 21 towards 5; reaches 19.5 after -tau*ln((19.5-5)/(21-5))
    assert flex.hp_down_s == pytest.approx(-20 * 3600 * np.log(14.5 / 16.0))
    # boosted: warms towards 5 + 20 = 25; reaches 23 after -tau*ln((23-25)/(21-25))
    assert flex.hp_up_s == pytest.approx(-20 * 3600 * np.log(0.5))
    assert flex.e_deliver_wh == pytest.approx(1000 * flex.hp_down_s / 3600)


# indoor, outdoor, hp_w, -> seconds in band [19.5, 23] with tau 10 h, gain 0.01 K/W
@pytest.mark.parametrize(
    ("indoor", "outdoor", "hp_w", "expected"),
    [
        (21.0, 5.0, 1500, 86_400.0),  # equilibrium 20 degC: stays inside
        (19.0, 5.0, 0, 0.0),  # already below the band
        (21.0, 5.0, 0, -36_000 * np.log(14.5 / 16.0)),
        (21.0, 5.0, 3000, -36_000 * np.log(12.0 / 14.0)),  # towards 35: reaches 23
    ],
)
def test_time_in_band(indoor, outdoor, hp_w, expected):
    model = ThermalModel(tau_s=36_000, gain_k_per_w=0.01)
    assert time_in_band(model, indoor, outdoor, hp_w, 19.5, 23.0) == pytest.approx(expected)


def test_thermal_model_is_fitted_from_measurements():
    true = ThermalModel(tau_s=25 * 3600, gain_k_per_w=0.008)
    dt, n = 60.0, 24 * 60
    rng = np.random.default_rng(7)
    hp_w = np.where((np.arange(n) // 45) % 2 == 0, 1800.0, 0.0)  # on/off cycling
    outdoor = 4.0 + 3.0 * np.sin(np.arange(n) * dt / 86_400 * 2 * np.pi)
    indoor = np.empty(n)
    indoor[0] = 21.0
    a = np.exp(-dt / true.tau_s)
    for k in range(n - 1):
        t_eq = true.equilibrium_c(outdoor[k], hp_w[k])
        indoor[k + 1] = t_eq + (indoor[k] - t_eq) * a + rng.normal(0, 0.0005)
    fitted = fit_thermal_model(indoor, outdoor, hp_w, dt)
    assert fitted.samples == n - 1
    assert fitted.tau_s == pytest.approx(true.tau_s, rel=0.1)
    assert fitted.gain_k_per_w == pytest.approx(true.gain_k_per_w, rel=0.1)


@pytest.mark.parametrize("case", ["too_few", "constant_power", "nan", "mismatched"])
def test_thermal_fit_keeps_the_prior_when_data_cannot_tell(case):
    prior = ThermalModel(tau_s=1234.0, gain_k_per_w=0.02)
    n = 200
    indoor, outdoor, hp_w = np.full(n, 21.0), np.full(n, 5.0), np.linspace(0, 2000, n)
    if case == "too_few":
        indoor, outdoor, hp_w = indoor[:10], outdoor[:10], hp_w[:10]
    elif case == "constant_power":
        hp_w = np.full(n, 1000.0)
    elif case == "nan":
        indoor[5] = np.nan
    else:
        outdoor = outdoor[:-1]
    assert fit_thermal_model(indoor, outdoor, hp_w, 60.0, prior=prior) is prior


def test_thermal_learner_refits_from_a_stream_with_bounded_memory():
    from edge.control.thermal import ThermalLearner

    true = ThermalModel(tau_s=20 * 3600, gain_k_per_w=0.008)
    learner = ThermalLearner(sample_s=60, capacity=500, refit_every_s=900)
    indoor = 21.0
    for k in range(4000):  # 2.8 days of 1-minute samples, more than the ring holds
        hp_w = 1500.0 if (k // 40) % 2 == 0 else 0.0
        model = learner.add(k * 60.0, indoor, 5.0, hp_w)
        t_eq = true.equilibrium_c(5.0, hp_w)
        indoor = t_eq + (indoor - t_eq) * np.exp(-60 / true.tau_s)
    assert model.samples == 499  # the ring's capacity, not everything ever seen
    assert model.tau_s == pytest.approx(true.tau_s, rel=0.02)
    assert model.gain_k_per_w == pytest.approx(true.gain_k_per_w, rel=0.02)
