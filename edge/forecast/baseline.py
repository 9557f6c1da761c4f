"""The site under its own local control, simulated over the horizon.

One path of expected household load, available PV and outdoor temperature goes in; the
agent's own fallback policy (:func:`edge.control.plan.fallback`: self-consumption, peak
shaving, PV curtailment at the export limit, heat pump boost on surplus) is run on it at a
sub-slot step (5 min), as the agent would run it, with

* the battery's charge/discharge limits from its rating and the BMS taper near full and
  empty (:func:`edge.forecast.battery.taper_limits`), its SoC window (the policy's own
  ``battery_window``) and its charge/discharge efficiencies;
* the heat pump either as its thermostat (setpoint, hysteresis; a boost raises the
  setpoint by ``boost_k``; blocked it stays off) on the learned thermal model, so the
  indoor temperature and the compressor's duty follow from the policy's SG-Ready choices,
  or as a given expected draw per slot (:class:`GivenHeatPump`);
* optionally a forecast *error path* (``error_wh``): extra or missing net demand that the
  simulation banks and releases on the battery where the battery feels it (see
  :func:`simulate`). The forecaster's pessimistic and optimistic paths are built this way.

Out come, per slot: the site's baseline grid power, the battery power (+ discharge), the
heat pump's power, the PV produced, the stored energy at the slot's end, the indoor
temperature and the BMS limits along the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.control.plan import (
    Battery,
    HeatPump,
    LocalControl,
    SgReady,
    SiteInputs,
    SiteLimits,
    battery_window,
    fallback,
)
from edge.forecast.battery import taper_limits
from edge.forecast.heat import HouseParams

__all__ = ["BatteryParams", "GivenHeatPump", "PathResult", "simulate"]


@dataclass(frozen=True, slots=True)
class BatteryParams:
    capacity_wh: float
    rated_charge_w: float
    rated_discharge_w: float
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    charge_taper_pct: float = 90.0
    discharge_taper_pct: float = 8.0


@dataclass(frozen=True, slots=True)
class PathResult:
    """Per slot (n,): means over the slot, or the state at its end."""

    grid_w: np.ndarray
    battery_w: np.ndarray  # + discharge
    heat_pump_w: np.ndarray
    pv_w: np.ndarray  # produced (after any curtailment)
    load_w: np.ndarray
    stored_wh: np.ndarray  # at the slot's end
    indoor_c: np.ndarray  # at the slot's end
    indoor_min_c: np.ndarray  # lowest in the slot
    indoor_max_c: np.ndarray  # highest in the slot
    boost_starts: np.ndarray  # bool: a boost would start the compressor through the slot
    charge_limit_w: np.ndarray  # lowest BMS charge limit in the slot
    discharge_limit_w: np.ndarray  # lowest BMS discharge limit in the slot


@dataclass(frozen=True, slots=True)
class GivenHeatPump:
    """The heat pump as an input instead of a thermostat: per slot (n,), the draw to expect
    under its own thermostat, the draw if boosted, and the indoor temperature (for the
    SG-Ready states the comfort band allows)."""

    normal_w: np.ndarray
    boost_w: np.ndarray
    indoor_c: np.ndarray


def simulate(
    *,
    limits: SiteLimits,
    durations_s: np.ndarray,
    load_w: np.ndarray,
    pv_sub_w: np.ndarray,
    outdoor_sub_c: np.ndarray,
    battery: BatteryParams | None,
    soc_pct: float | None,
    house: HouseParams | None = None,
    indoor_c: float | None = None,
    hp_on: bool = False,
    hp_boosted: bool = False,
    given_hp: GivenHeatPump | None = None,
    error_wh: np.ndarray | None = None,
    pv_potential_sub_w: np.ndarray | None = None,
    local_control: LocalControl = fallback,
) -> PathResult:
    """Run the fallback policy over slots of ``durations_s`` (n,), each cut in the ``m``
    sub-steps of ``pv_sub_w`` / ``outdoor_sub_c`` (n, m); ``load_w`` is per slot.

    The heat pump is either ``house`` (its thermostat on the thermal model, from
    ``indoor_c`` and compressor state ``hp_on``) or ``given_hp`` (its draw given), or absent.

    ``error_wh`` (n,): a forecast error path, the extra net demand (Wh, + = more load or
    less PV) that may have accrued by each slot beyond the one before. It is *banked* and
    released on the battery as soon as the battery can feel it: extra demand while the
    battery sits empty at its floor changes nothing until the battery next charges or
    discharges, and an error that the cumulative bounds allow in any slot is assumed in the
    slot where it hurts most (delaying an error never breaks a cumulative bound). This is
    what makes the pessimistic and optimistic paths bound the stored energy, not merely
    the demand. Less demand is released only as far as it can physically go: no load and
    no heat pump, and PV at ``pv_potential_sub_w`` (n, m; the forecast PV without it).

    ``local_control``: the policy the site runs on its own (:func:`fallback` or peak shaving,
    its fallback mode).
    """
    if house is not None and given_hp is not None:
        raise ValueError("give the heat pump as a house or as given power, not both")
    n, m = pv_sub_w.shape
    names = ("grid", "bat", "hp", "pv", "load", "e", "t", "tmin", "tmax", "cha", "dis")
    out = {name: np.zeros(n) for name in names}
    boost_ok = np.zeros(n, dtype=bool)
    bat = battery
    cap = bat.capacity_wh if bat is not None else 0.0
    e = (soc_pct or 0.0) / 100.0 * cap
    floor_wh = limits.soc_min_pct / 100.0 * cap
    t_in = indoor_c if indoor_c is not None else 20.0
    on = hp_on
    boosted = hp_boosted
    thermostat = house is not None
    if house is not None:
        sp, hyst, on_w = house.setpoint_c, house.hysteresis_k, house.on_w
        boost_target = sp + house.boost_k
        starts_below = boost_target - house.boost_margin_k
        tau, gain, offset = house.model.tau_s, house.model.gain_k_per_w, house.offset_w
    bank = 0.0
    for k in range(n):
        dt = float(durations_s[k]) / m
        h = dt / 3600.0
        step_wh = 0.0 if error_wh is None else float(error_wh[k]) / m
        a = math.exp(-dt / tau) if thermostat else 0.0
        load = float(load_w[k])
        s_grid = s_bat = s_hp = s_pv = 0.0
        if given_hp is not None:
            t_in = float(given_hp.indoor_c[k])
            given = HeatPump(
                normal_w=float(given_hp.normal_w[k]),
                boost_w=float(given_hp.boost_w[k]),
                indoor_c=t_in,
            )
        t_lo = t_hi = t_in
        cha_min = dis_min = math.inf
        starts_all = thermostat
        for j in range(m):
            pv = float(pv_sub_w[k, j])
            b_in = None
            if bat is not None:
                soc = 100.0 * e / cap
                cha, dis = taper_limits(
                    soc,
                    bat.rated_charge_w,
                    bat.rated_discharge_w,
                    bat.charge_taper_pct,
                    bat.discharge_taper_pct,
                )
                cha_min = min(cha_min, cha)
                dis_min = min(dis_min, dis)
                b_in = Battery(soc_pct=soc, capacity_wh=cap, max_charge_w=cha, max_discharge_w=dis)
            hp_in = given if given_hp is not None else None
            if thermostat:
                if t_in < sp - hyst:
                    normal_on = True
                elif t_in > sp + hyst:
                    normal_on = False
                else:
                    normal_on = on  # inside the hysteresis: as it was
                normal_w = on_w if normal_on else 0.0
                starts = (boosted and on) or t_in < starts_below
                starts_all = starts_all and starts
                hp_in = HeatPump(
                    normal_w=normal_w, boost_w=on_w if starts else normal_w, indoor_c=t_in
                )
            plan = local_control(SiteInputs(load, pv, b_in, hp_in), limits, dt)
            grid = plan.grid_w
            hp_w = 0.0
            if hp_in is not None:
                state = plan.sg_ready
                assumed = (
                    0.0
                    if state is SgReady.BLOCKED
                    else hp_in.boost_w
                    if state is SgReady.RECOMMENDED
                    else hp_in.normal_w
                )
                hp_w = assumed
            if thermostat:
                if state is SgReady.BLOCKED:
                    on, boosted = False, False
                elif state is SgReady.RECOMMENDED:
                    if t_in < boost_target - hyst:
                        on = True
                    elif t_in > boost_target + hyst:
                        on = False
                    boosted = True
                else:
                    on, boosted = normal_on, False
                hp_w = on_w if on else 0.0
                grid += hp_w - assumed  # what the thermostat does, not what was assumed
                # the house over the step (exact for constant inputs)
                t_out = float(outdoor_sub_c[k, j])
                t_in = t_out + a * (t_in - t_out) + (1.0 - a) * gain * (hp_w + offset)
                t_lo = min(t_lo, t_in)
                t_hi = max(t_hi, t_in)
            b = plan.battery_w
            room_w = math.inf
            if bat is not None:
                # the policy's SoC window ignores the efficiency (at the agent's 1 s cycle it
                # does not matter): land on the floor, as the agent does, not below it
                room_w = max(0.0, (e - floor_wh) * bat.eta_discharge / h)
                if b > room_w:
                    grid += b - room_w
                    b = room_w
            if error_wh is not None:
                bank += step_wh
                x_step = step_wh / h  # this step's own share, as power
                net = grid + b  # demand before the battery
                # the demand cannot fall below nothing (no load, no heat pump, the sun's best)
                best = pv if pv_potential_sub_w is None else float(pv_potential_sub_w[k, j])
                lowest = min(net, -best)
                db = 0.0
                if b_in is not None and bank != 0.0:
                    lo, hi, _, _ = battery_window(b_in, limits, dt)
                    hi = min(hi, room_w)
                    want = max(net + bank / h, lowest)
                    moved = min(hi, max(lo, want)) - min(hi, max(lo, net))
                    db = max(0.0, moved) if bank > 0 else min(0.0, moved)
                    bank -= db * h
                    b += db
                # what the battery did not take of this step's own error shows on the grid
                if step_wh > 0:
                    grid += max(0.0, x_step - db)
                elif step_wh < 0:
                    grid += min(0.0, max(x_step, lowest - net) - db)
            if bat is not None:
                e -= (b / bat.eta_discharge if b > 0 else b * bat.eta_charge) * h
                e = min(cap, max(0.0, e))
            produced = pv if plan.pv_limit_w is None else min(pv, plan.pv_limit_w)
            s_grid += grid
            s_bat += b
            s_hp += hp_w
            s_pv += produced
        out["grid"][k] = s_grid / m
        out["bat"][k] = s_bat / m
        out["hp"][k] = s_hp / m
        out["pv"][k] = s_pv / m
        out["load"][k] = load
        out["e"][k] = e
        out["t"][k] = t_in
        out["tmin"][k] = t_lo
        out["tmax"][k] = t_hi
        out["cha"][k] = 0.0 if cha_min == math.inf else cha_min
        out["dis"][k] = 0.0 if dis_min == math.inf else dis_min
        boost_ok[k] = starts_all
    return PathResult(
        grid_w=out["grid"],
        battery_w=out["bat"],
        heat_pump_w=out["hp"],
        pv_w=out["pv"],
        load_w=out["load"],
        stored_wh=out["e"],
        indoor_c=out["t"],
        indoor_min_c=out["tmin"],
        indoor_max_c=out["tmax"],
        boost_starts=boost_ok,
        charge_limit_w=out["cha"],
        discharge_limit_w=out["dis"],
    )
