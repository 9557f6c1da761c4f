"""House thermal model (one RC node), outdoor temperature and a heat pump with SG-Ready.

* Outdoor temperature: a seasonal daily mean (a Belgian climate: about 3 degC in late January,
  18 degC in late July), a per-site offset, a daily sinusoid (coldest near 05:00 solar time,
  warmest near 15:00; wider in summer) and a slow seeded AR(1) weather wiggle. The date comes
  from the clock, so a demo started in January heats and one started in June does not.
* House: ``C dT/dt = Q_hp + Q_gain - UA (T_in - T_out)``, integrated exactly over ``dt`` for a
  constant input (stable for any step).
* Heat pump: on/off thermostat with hysteresis, SG-Ready states 1-4 (see
  :mod:`protocols.registers.heat_pump`), an electrical power limit, and a COP from a Carnot
  fraction at a weather-compensated flow temperature.
"""

from __future__ import annotations

import numpy as np

from firmware_sim.physics.noise import Ar1Process

HYSTERESIS_K = 0.4


#: Seasonal mean outdoor temperature: annual mean, half the summer-winter swing, and the day
#: of the year of the coldest days (Uccle's 1991-2020 normals: about 3.5 degC in January and
#: 18.5 degC in July).
ANNUAL_MEAN_C = 10.8
SEASONAL_SWING_C = 7.5
COLDEST_DAY = 20


def seasonal_mean_c(t: float) -> float:
    """The climate's daily mean outdoor temperature on the day of Unix time ``t``."""
    day_of_year = (t / 86400.0) % 365.2422
    return ANNUAL_MEAN_C - SEASONAL_SWING_C * float(
        np.cos(2 * np.pi * (day_of_year - COLDEST_DAY) / 365.2422)
    )


class OutdoorTemperature:
    """Outdoor temperature per site, degC (see the module docstring)."""

    def __init__(self, seed: int, n: int) -> None:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 31])
        self.offset = rng.uniform(-2.0, 2.0, n)
        self.amplitude = rng.uniform(3.0, 5.0, n)
        self._weather = Ar1Process(seed, salt=4, n=n, step_s=1800.0, phi=0.95)

    def value(self, t: float, lon_deg) -> np.ndarray:
        hours = ((t % 86400.0) / 3600.0 + np.asarray(lon_deg) / 15.0) % 24.0
        daily = -np.cos(2 * np.pi * (hours - 3.0) / 24.0)  # -1 at 03:00+2h lag ~ min at 05h
        mean = seasonal_mean_c(t)
        # sunny summer days swing wider than grey winter ones
        amplitude = self.amplitude * (1.0 + 0.04 * (mean - ANNUAL_MEAN_C))
        return mean + self.offset + amplitude * daily + 1.5 * self._weather.value(t)


def house_step(t_in, t_out, q_w, dt, ua_w_per_k, c_j_per_k):
    """Indoor temperature after ``dt`` s with heat input ``q_w`` (exact for constant input)."""
    t_eq = np.asarray(t_out) + np.asarray(q_w) / ua_w_per_k
    decay = np.exp(-dt * np.asarray(ua_w_per_k) / c_j_per_k)
    return t_eq + (np.asarray(t_in) - t_eq) * decay


def flow_temp_c(t_out):
    """Weather-compensated flow temperature: 30 degC at 15 degC outside, 45 at -10."""
    return np.clip(30.0 + 0.6 * (15.0 - np.asarray(t_out)), 28.0, 50.0)


def cop(t_out, t_flow):
    """Coefficient of performance: 45 % of Carnot, within [1.5, 6]."""
    t_flow = np.asarray(t_flow)
    lift = np.maximum(t_flow - np.asarray(t_out), 5.0)
    return np.clip(0.45 * (t_flow + 273.15) / lift, 1.5, 6.0)


def heat_pump_demand(t_in, was_on, sg_ready, setpoint_c, boost_k, max_overheat_k):
    """Whether the compressor runs this step (bool array), before the power limit.

    SG 1: off. SG 2: thermostat on ``setpoint`` with hysteresis. SG 3: same on
    ``setpoint + boost``. SG 4: on until ``setpoint + max_overheat``.
    """
    t_in = np.asarray(t_in)
    sg = np.asarray(sg_ready)
    target = np.asarray(setpoint_c) + np.where(sg == 3, boost_k, 0.0)
    thermostat = np.where(
        t_in < target - HYSTERESIS_K, True, np.where(t_in > target + HYSTERESIS_K, False, was_on)
    )
    forced = t_in < np.asarray(setpoint_c) + max_overheat_k
    return np.where(sg == 1, False, np.where(sg == 4, forced, thermostat))
