"""The physics of N sites at once: parameters, controls in, state out, one vectorised step.

Devices write their control registers into :class:`Controls` (plain numpy arrays, one slot
per site) and read :class:`FleetPhysics` state back into their registers. The step is pure
numpy over sites, so a fleet of hundreds of sites costs one small array pass per tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from firmware_sim.physics import battery, house
from firmware_sim.physics.load import HouseholdLoad
from firmware_sim.physics.sun import Cloudiness, clear_sky_fraction, pv_available_w
from protocols.registers.heat_pump import MAX_OVERHEAT_K
from protocols.units import grid_w

#: Largest physics sub-step (simulated seconds); a longer tick is split.
MAX_SUBSTEP_S = 30.0


@dataclass
class SiteParams:
    """Per-site constants, drawn from the seed (arrays of length n)."""

    lat_deg: np.ndarray
    lon_deg: np.ndarray
    pv_peak_w: np.ndarray
    bat_capacity_wh: np.ndarray
    bat_max_w: np.ndarray
    bat_ramp_w_per_s: np.ndarray
    eta_charge: float
    eta_discharge: float
    hp_rated_w: np.ndarray
    house_ua_w_per_k: np.ndarray
    house_c_j_per_k: np.ndarray
    house_gain_w: np.ndarray

    @classmethod
    def draw(cls, seed: int, n: int) -> SiteParams:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 1001])
        bat_max = np.round(rng.uniform(2500, 5000, n), -2)
        return cls(
            lat_deg=rng.uniform(50.3, 51.4, n),
            lon_deg=rng.uniform(3.0, 5.9, n),
            pv_peak_w=np.round(rng.uniform(3000, 9000, n), -2),
            bat_capacity_wh=np.round(rng.uniform(5000, 13500, n), -2),
            bat_max_w=bat_max,
            bat_ramp_w_per_s=bat_max / 2.0,
            eta_charge=0.95,
            eta_discharge=0.95,
            hp_rated_w=np.round(rng.uniform(800, 2000, n), -2),
            house_ua_w_per_k=rng.uniform(120, 250, n),
            house_c_j_per_k=rng.uniform(1.5e7, 3.0e7, n),
            house_gain_w=rng.uniform(150, 400, n),
        )


class Controls:
    """Control inputs per site, as the devices' control registers currently command."""

    def __init__(self, p: SiteParams) -> None:
        n = len(p.pv_peak_w)
        self.pv_limit_w = np.full(n, np.inf)
        self.pv_online = np.ones(n, dtype=bool)
        self.bat_lo_w = -p.bat_max_w.copy()  # window of battery power, + = discharge
        self.bat_hi_w = p.bat_max_w.copy()
        self.bat_wchamax_w = p.bat_max_w.copy()
        self.bat_online = np.ones(n, dtype=bool)
        self.hp_sg = np.full(n, 2, dtype=int)
        self.hp_setpoint_c = np.full(n, 21.0)
        self.hp_limit_w = np.full(n, np.inf)
        self.hp_boost_k = np.full(n, 2.0)
        self.hp_online = np.ones(n, dtype=bool)


class FleetPhysics:
    """State of N sites, advanced by :meth:`step` on the shared clock's time."""

    def __init__(self, seed: int, n: int, t0: float) -> None:
        self.seed, self.n, self.t = seed, n, float(t0)
        self.p = SiteParams.draw(seed, n)
        self.ctl = Controls(self.p)
        self.clouds = Cloudiness(seed, n)
        self.load = HouseholdLoad(seed, n)
        self.outdoor = house.OutdoorTemperature(seed, n)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 2002])
        self.soc_wh = self.p.bat_capacity_wh * rng.uniform(0.3, 0.7, n)
        self.t_in = rng.uniform(20.0, 21.5, n)
        self.hp_on = np.zeros(n, dtype=bool)
        # lifetime counters start non-zero, as on any installed device
        self.pv_wh = rng.uniform(1e6, 2e7, n)
        self.bat_dis_wh = rng.uniform(1e5, 3e6, n)
        self.bat_cha_wh = self.bat_dis_wh * 1.1
        self.hp_wh = rng.uniform(1e6, 1e7, n)
        self.grid_imp_wh = rng.uniform(1e6, 3e7, n)
        self.grid_exp_wh = rng.uniform(1e6, 2e7, n)
        zeros = np.zeros(n)
        self.pv_w, self.load_w, self.bat_w, self.hp_w = zeros.copy(), zeros.copy(), zeros, zeros
        self.hp_thermal_w, self.cop = zeros.copy(), np.full(n, 3.0)
        self.flow_c = np.full(n, 35.0)
        self.cloud = zeros.copy()
        self.t_out = self.outdoor.value(self.t, self.p.lon_deg)
        self.grid_w = zeros.copy()
        self.bat_charge_limit_w, self.bat_discharge_limit_w = battery.bms_limits(
            self.soc_wh, self.p.bat_capacity_wh, self.p.bat_max_w, self.p.bat_max_w
        )
        self.step(self.t, 0.0)

    @property
    def soc_pct(self) -> np.ndarray:
        return self.soc_wh / self.p.bat_capacity_wh * 100.0

    def advance_to(self, t: float) -> None:
        """Advance to clock time ``t`` in sub-steps of at most :data:`MAX_SUBSTEP_S`."""
        total = t - self.t
        if total <= 0:
            return
        steps = max(1, math.ceil(total / MAX_SUBSTEP_S))
        dt = total / steps
        for i in range(1, steps + 1):
            self.step(self.t + dt if i < steps else t, dt)

    def step(self, t: float, dt: float) -> None:
        """One step of length ``dt`` ending at time ``t`` (``dt = 0`` just evaluates)."""
        p, c = self.p, self.ctl
        self.t = t
        self.t_out = self.outdoor.value(t, p.lon_deg)
        self.load_w = self.load.value(t, p.lon_deg)
        self.cloud = self.clouds.value(t)
        avail = pv_available_w(p.pv_peak_w, clear_sky_fraction(t, p.lat_deg, p.lon_deg), self.cloud)
        self.pv_w = np.where(c.pv_online, np.minimum(avail, np.maximum(c.pv_limit_w, 0.0)), 0.0)

        # heat pump
        on = house.heat_pump_demand(
            self.t_in, self.hp_on, c.hp_sg, c.hp_setpoint_c, c.hp_boost_k, MAX_OVERHEAT_K
        )
        limit = np.minimum(p.hp_rated_w, np.maximum(c.hp_limit_w, 0.0))
        on = on & c.hp_online & (limit > 0)
        self.hp_on = on
        self.hp_w = np.where(on, limit, 0.0)
        self.flow_c = house.flow_temp_c(self.t_out)
        self.cop = house.cop(self.t_out, self.flow_c)
        self.hp_thermal_w = self.hp_w * self.cop

        # battery: self-consumption inside the commanded window, then BMS, then ramp
        net = self.load_w + self.hp_w - self.pv_w
        target = np.clip(net, c.bat_lo_w, c.bat_hi_w)
        target = np.clip(target, -c.bat_wchamax_w, c.bat_wchamax_w)
        cha_lim, dis_lim = battery.bms_limits(
            self.soc_wh, p.bat_capacity_wh, p.bat_max_w, p.bat_max_w
        )
        self.bat_charge_limit_w, self.bat_discharge_limit_w = cha_lim, dis_lim
        target = np.where(c.bat_online, np.clip(target, -cha_lim, dis_lim), 0.0)
        if dt > 0:
            ramped = battery.ramp(self.bat_w, target, p.bat_ramp_w_per_s, dt)
            self.soc_wh, self.bat_w = battery.integrate(
                self.soc_wh, ramped, dt, p.bat_capacity_wh, p.eta_charge, p.eta_discharge
            )
        else:
            self.bat_w = np.zeros(self.n) if np.ndim(self.bat_w) == 0 else self.bat_w
        self.grid_w = grid_w(self.load_w, self.hp_w, self.pv_w, self.bat_w)

        if dt > 0:
            h = dt / 3600.0
            self.pv_wh = self.pv_wh + self.pv_w * h
            self.bat_dis_wh = self.bat_dis_wh + np.maximum(self.bat_w, 0) * h
            self.bat_cha_wh = self.bat_cha_wh + np.maximum(-self.bat_w, 0) * h
            self.hp_wh = self.hp_wh + self.hp_w * h
            self.grid_imp_wh = self.grid_imp_wh + np.maximum(self.grid_w, 0) * h
            self.grid_exp_wh = self.grid_exp_wh + np.maximum(-self.grid_w, 0) * h
            self.t_in = house.house_step(
                self.t_in,
                self.t_out,
                self.hp_thermal_w + p.house_gain_w,
                dt,
                p.house_ua_w_per_k,
                p.house_c_j_per_k,
            )

    def truth(self, i: int) -> dict[str, float]:
        """Ground truth of site ``i`` in vpp's sign convention (see :mod:`protocols.units`)."""
        return {
            "pv_w": float(self.pv_w[i]),
            "load_w": float(self.load_w[i]),
            "battery_w": float(self.bat_w[i]),
            "soc_pct": float(self.soc_pct[i]),
            "heat_pump_w": float(self.hp_w[i]),
            "grid_w": float(self.grid_w[i]),
            "indoor_temp_c": float(self.t_in[i]),
            "outdoor_temp_c": float(self.t_out[i]),
            "flow_temp_c": float(self.flow_c[i]),
            "heat_pump_thermal_w": float(self.hp_thermal_w[i]),
            "cloudiness": float(self.cloud[i]),
            "battery_charge_limit_w": float(self.bat_charge_limit_w[i]),
            "battery_discharge_limit_w": float(self.bat_discharge_limit_w[i]),
            "pv_peak_w": float(self.p.pv_peak_w[i]),
            "battery_capacity_wh": float(self.p.bat_capacity_wh[i]),
            "battery_max_w": float(self.p.bat_max_w[i]),
            "heat_pump_rated_w": float(self.p.hp_rated_w[i]),
        }
