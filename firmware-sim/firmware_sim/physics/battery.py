"""Battery cell and BMS: SoC integration with efficiency, power ramps and the BMS's own limits.

Signs follow :mod:`protocols.units`: power + = discharge, - = charge. Stored energy is in Wh
of *usable* capacity (0 = empty, capacity = full), so the BMS stops at 0 % and 100 % of what
it reports.

* Charging ``-p`` W for ``dt`` s stores ``p * eta_charge * dt / 3600`` Wh.
* Discharging ``p`` W draws ``p / eta_discharge * dt / 3600`` Wh.
* The BMS tapers the charge limit linearly from 90 % to 0 at 100 %, and the discharge limit
  from 8 % to 0 at 0 %: the *device* stops at full / empty, whatever it is told.
* The inverter moves towards its target at most ``ramp_w_per_s``.
"""

from __future__ import annotations

import numpy as np

CHARGE_TAPER_FROM = 0.90
DISCHARGE_TAPER_FROM = 0.08


def bms_limits(soc_wh, capacity_wh, max_charge_w, max_discharge_w):
    """(charge limit W >= 0, discharge limit W >= 0) the BMS allows at this state of charge."""
    soc = np.asarray(soc_wh) / np.asarray(capacity_wh)
    charge_f = np.clip((1.0 - soc) / (1.0 - CHARGE_TAPER_FROM), 0.0, 1.0)
    discharge_f = np.clip(soc / DISCHARGE_TAPER_FROM, 0.0, 1.0)
    # a little floor above zero so the last percent still fills/empties in finite time
    charge = np.where(soc < 0.9999, np.maximum(charge_f, 0.02), 0.0) * max_charge_w
    discharge = np.where(soc > 0.0001, np.maximum(discharge_f, 0.02), 0.0) * max_discharge_w
    return charge, discharge


def ramp(p_now, p_target, ramp_w_per_s, dt):
    """Move ``p_now`` towards ``p_target`` by at most ``ramp_w_per_s * dt``."""
    step = np.asarray(ramp_w_per_s) * dt
    return np.asarray(p_now) + np.clip(np.asarray(p_target) - p_now, -step, step)


def integrate(soc_wh, p_w, dt, capacity_wh, eta_charge, eta_discharge):
    """New stored energy after holding ``p_w`` for ``dt`` s, and the power actually delivered.

    The power is cut so the energy never leaves [0, capacity] within the step (the BMS opens
    the contactor rather than over- or under-charge).
    """
    soc_wh = np.asarray(soc_wh, dtype=float)
    p_w = np.asarray(p_w, dtype=float)
    hours = dt / 3600.0
    if hours <= 0:
        return soc_wh.copy(), p_w.copy()
    # largest discharge/charge power the remaining energy/room allows in this step
    max_dis = soc_wh * eta_discharge / hours
    max_cha = (np.asarray(capacity_wh) - soc_wh) / eta_charge / hours
    p = np.clip(p_w, -max_cha, max_dis)
    delta = np.where(p >= 0, -p / eta_discharge, -p * eta_charge) * hours
    return np.clip(soc_wh + delta, 0.0, capacity_wh), p
