"""The site control maths: pure functions from one cycle's inputs to the devices' commands.

Order of authority (DESIGN.md, "Control priorities at the site"):

1. **Hard limits** bound every option before anything chooses among them: device ratings
   and the BMS's present limits, the battery SoC window, the grid connection (fuse) limit,
   the export limit, and the heat pump's comfort band.
2. **The cloud's dispatch** (a grid power target) while it is valid: :func:`follow`.
3. **Local fallback** otherwise: :func:`fallback` (self-consumption, peak shaving at the
   grid limit, PV curtailment at the export limit, SG-Ready boost on surplus), or, when the
   site's ``edge.fallback_mode`` flag says so, :func:`peak_shaving` (the battery only caps
   the grid import at a set limit and keeps the export within the export limit).

Every cycle the agent also computes the fallback plan (its grid power is the site's
*baseline*) and :func:`flexibility`, whatever it follows.

The decision variables are the battery power setpoint (+ discharge), an optional PV power
limit and the heat pump's SG-Ready state. SG-Ready is discrete, so each function evaluates
the few heat pump states the comfort band allows, solves the battery and PV for each, and
keeps the best: a handful of arithmetic operations, no solver, no I/O.

All powers in W with the sign convention of :mod:`protocols.units`
(grid + = import, battery + = discharge).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from protocols.messages import Limit

__all__ = [
    "SOC_EDGE_TAPER_S",
    "Battery",
    "HeatPump",
    "LocalControl",
    "Plan",
    "SgReady",
    "SiteInputs",
    "SiteLimits",
    "battery_window",
    "fallback",
    "follow",
    "heat_pump_options",
    "heat_pump_power",
    "peak_shaving",
]

BOOST_MIN_SURPLUS_FRACTION = 1.0
"""Fallback boosts the heat pump only when the PV surplus covers the whole extra draw."""


class SgReady(IntEnum):
    """SG-Ready states (see protocols.registers.heat_pump)."""

    BLOCKED = 1
    NORMAL = 2
    RECOMMENDED = 3
    FORCED = 4


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """The site's hard limits, from the installer's config."""

    grid_import_w: float  # fuse / connection limit, import direction (> 0)
    grid_export_w: float  # export limit, as a positive number (0 = no export allowed)
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0
    comfort_min_c: float = 19.5
    comfort_max_c: float = 23.0

    def __post_init__(self) -> None:
        if not (self.grid_import_w > 0 and self.grid_export_w >= 0):
            raise ValueError("grid_import_w must be > 0 and grid_export_w >= 0")
        if not 0 <= self.soc_min_pct < self.soc_max_pct <= 100:
            raise ValueError("need 0 <= soc_min_pct < soc_max_pct <= 100")
        if not self.comfort_min_c < self.comfort_max_c:
            raise ValueError("comfort_min_c must be below comfort_max_c")


@dataclass(frozen=True, slots=True)
class Battery:
    """The battery as the agent sees it this cycle (fresh data only)."""

    soc_pct: float
    capacity_wh: float
    max_charge_w: float  # present charge limit: rating and the BMS's own limit (>= 0)
    max_discharge_w: float  # present discharge limit (>= 0)


@dataclass(frozen=True, slots=True)
class HeatPump:
    """The heat pump as the agent sees it this cycle.

    ``normal_w`` is what it draws under its own thermostat now (SG-Ready 2), ``boost_w`` what
    it draws when boosted (SG-Ready 3/4: at its power limit).
    """

    normal_w: float
    boost_w: float
    indoor_c: float


@dataclass(frozen=True, slots=True)
class SiteInputs:
    """One cycle's measurements, already checked fresh by the caller.

    ``load_w`` is the household load without the heat pump (derived from the meter);
    ``pv_available_w`` what the PV could produce without curtailment. A device that is
    absent or lost is ``None`` and offers no flexibility.
    """

    load_w: float
    pv_available_w: float = 0.0
    battery: Battery | None = None
    heat_pump: HeatPump | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to command this cycle, and the grid power expected if the devices follow."""

    battery_w: float
    pv_limit_w: float | None
    sg_ready: SgReady | None
    grid_w: float
    clamped_by: tuple[Limit, ...] = field(default=())


#: a local control policy: (inputs, limits, cycle_s) -> plan; :func:`fallback` or a
#: :func:`peak_shaving` with its limit bound (the forecaster simulates the same one)
LocalControl = Callable[["SiteInputs", SiteLimits, float], Plan]

SOC_EDGE_TAPER_S = 120.0
"""Shortest time over which the energy left before a SoC edge may be spent (see battery_window)."""


def battery_window(
    battery: Battery | None, limits: SiteLimits, cycle_s: float
) -> tuple[float, float, Limit | None, Limit | None]:
    """Battery power bounds ``(lo, hi)`` (+ discharge) and the limit behind each bound.

    The SoC window bounds power near its edges: the battery may not move more energy in
    ``max(cycle_s, SOC_EDGE_TAPER_S)`` than is left before the edge. It lands on the edge
    instead of overshooting, and approaches it along a taper: with a 1 s cycle alone, 10 Wh
    above the floor would allow 36 kW for one cycle and nothing the next, a battery
    switching on and off at its floor with every step of the SoC register.
    """
    if battery is None:
        return 0.0, 0.0, Limit.DEVICE_UNAVAILABLE, Limit.DEVICE_UNAVAILABLE
    hours = max(cycle_s, SOC_EDGE_TAPER_S) / 3600.0
    above_floor_wh = max(0.0, (battery.soc_pct - limits.soc_min_pct) / 100 * battery.capacity_wh)
    below_ceiling_wh = max(0.0, (limits.soc_max_pct - battery.soc_pct) / 100 * battery.capacity_wh)
    hi, hi_limit = max(0.0, battery.max_discharge_w), Limit.DEVICE_RATING
    if above_floor_wh / hours < hi:
        hi, hi_limit = above_floor_wh / hours, Limit.SOC_WINDOW
    lo, lo_limit = -max(0.0, battery.max_charge_w), Limit.DEVICE_RATING
    if below_ceiling_wh / hours < -lo:
        lo, lo_limit = -below_ceiling_wh / hours, Limit.SOC_WINDOW
    return lo, hi, lo_limit, hi_limit


def heat_pump_options(heat_pump: HeatPump | None, limits: SiteLimits) -> list[SgReady]:
    """SG-Ready states the comfort band allows now; NORMAL is always allowed."""
    if heat_pump is None:
        return []
    options = [SgReady.NORMAL]
    if heat_pump.indoor_c > limits.comfort_min_c:
        options.append(SgReady.BLOCKED)
    if heat_pump.indoor_c < limits.comfort_max_c:
        options.append(SgReady.RECOMMENDED)
    return options


def heat_pump_power(heat_pump: HeatPump | None, state: SgReady | None) -> float:
    """Expected heat pump draw in an SG-Ready state (0 without a heat pump)."""
    if heat_pump is None or state is None:
        return 0.0
    if state is SgReady.BLOCKED:
        return 0.0
    if state in (SgReady.RECOMMENDED, SgReady.FORCED):
        return max(heat_pump.boost_w, heat_pump.normal_w)
    return heat_pump.normal_w


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, value))


@dataclass(frozen=True, slots=True)
class _Candidate:
    plan: Plan
    error_w: float
    rank: int  # tie-break: prefer leaving the heat pump alone


def _solve(
    inputs: SiteInputs,
    limits: SiteLimits,
    cycle_s: float,
    target_w: float,
    state: SgReady | None,
    curtail: bool = True,
) -> tuple[Plan, Limit | None]:
    """Battery and PV for one heat pump state, aiming at grid power ``target_w``.

    PV is curtailed towards the target only when ``curtail`` (a cloud target; fallback
    curtails for the export limit alone). Returns the plan and, when the target is out of
    reach, the limit that stopped it.
    """
    lo, hi, lo_limit, hi_limit = battery_window(inputs.battery, limits, cycle_s)
    pv = max(0.0, inputs.pv_available_w)
    net = inputs.load_w + heat_pump_power(inputs.heat_pump, state) - pv
    wanted = net - target_w  # battery power that would put the grid on target
    battery_w = _clamp(wanted, lo, hi)
    grid = net - battery_w
    binding: Limit | None = None
    pv_limit: float | None = None
    if grid < target_w - 1e-9:
        # Still exporting more than asked (battery full or at its charge limit): curtail PV.
        cut = min(pv, target_w - grid) if curtail else 0.0
        if cut > 0:
            pv_limit = pv - cut
            grid += cut
        if grid < target_w - 1e-9:
            binding = lo_limit
    elif grid > target_w + 1e-9:
        binding = hi_limit
    plan = Plan(battery_w=battery_w, pv_limit_w=pv_limit, sg_ready=state, grid_w=grid)
    return plan, binding


def _best(
    inputs: SiteInputs,
    limits: SiteLimits,
    cycle_s: float,
    target_w: float,
    states: list[SgReady] | list[None],
) -> tuple[Plan, Limit | None]:
    """The heat pump state whose plan lands closest to the target (NORMAL on ties)."""
    best: tuple[float, int, Plan, Limit | None] | None = None
    for rank, state in enumerate(states):
        plan, binding = _solve(inputs, limits, cycle_s, target_w, state)
        # PV curtailment wastes energy: count it as a small cost so it is the last resort.
        waste = 0.0 if plan.pv_limit_w is None else 1e-6 * (inputs.pv_available_w - plan.pv_limit_w)
        key = (abs(plan.grid_w - target_w) + waste, rank)
        if best is None or key < best[:2]:
            best = (*key, plan, binding)
    assert best is not None
    return best[2], best[3]


def fallback(inputs: SiteInputs, limits: SiteLimits, cycle_s: float = 1.0) -> Plan:
    """Local control without the cloud: self-consumption within the site's hard limits.

    * the battery takes the PV surplus and covers the load (grid power towards 0);
    * peak shaving: above the import limit the heat pump is blocked (comfort permitting);
    * PV is curtailed only to respect the export limit;
    * the heat pump is boosted (SG-Ready 3) when the surplus left after the battery pays
      for the whole extra draw, otherwise it runs on its own thermostat.
    """
    hp = inputs.heat_pump
    normal_state = SgReady.NORMAL if hp is not None else None
    plan, _ = _solve(inputs, limits, cycle_s, 0.0, normal_state, curtail=False)
    options = heat_pump_options(hp, limits)
    if hp is not None:
        extra = max(0.0, hp.boost_w - hp.normal_w)
        if (
            SgReady.RECOMMENDED in options
            and extra > 0
            and -plan.grid_w >= BOOST_MIN_SURPLUS_FRACTION * extra
        ):
            plan, _ = _solve(inputs, limits, cycle_s, 0.0, SgReady.RECOMMENDED, curtail=False)
        elif plan.grid_w > limits.grid_import_w and SgReady.BLOCKED in options:
            plan, _ = _solve(inputs, limits, cycle_s, 0.0, SgReady.BLOCKED, curtail=False)
    return _within_export_limit(plan, inputs, limits)


def peak_shaving(
    inputs: SiteInputs, limits: SiteLimits, limit_w: float, cycle_s: float = 1.0
) -> Plan:
    """Local control that keeps the battery for the peaks: import held at ``limit_w``.

    * above ``limit_w`` (never above the grid connection's import limit) the battery
      discharges the excess, and the heat pump is blocked if that is not enough (comfort
      permitting);
    * below it the battery does not cover the load: its energy waits for the next peak;
    * a PV surplus (the site exporting) charges it, so it is full again for the next peak;
      what it cannot take is exported, and PV is curtailed only for the export limit;
    * the heat pump runs on its own thermostat otherwise (no boost: the surplus is the
      battery's).

    Why recharge from surplus: a battery that only ever discharges is empty after the first
    evening peak, and peak shaving with an empty battery shaves nothing (OpenEMS's peak
    shaving controller recharges below its limit for the same reason). It never charges from
    the grid, so it never adds import.
    """
    cap = max(0.0, min(limit_w, limits.grid_import_w))
    hp = inputs.heat_pump
    plan = _shave(inputs, limits, cycle_s, cap, SgReady.NORMAL if hp is not None else None)
    if plan.grid_w > cap + 1e-9 and SgReady.BLOCKED in heat_pump_options(hp, limits):
        plan = _shave(inputs, limits, cycle_s, cap, SgReady.BLOCKED)
    return _within_export_limit(plan, inputs, limits)


def _shave(
    inputs: SiteInputs, limits: SiteLimits, cycle_s: float, cap_w: float, state: SgReady | None
) -> Plan:
    """The battery for one heat pump state: discharge above ``cap_w``, charge from a surplus,
    idle in between."""
    lo, hi, _, _ = battery_window(inputs.battery, limits, cycle_s)
    net = inputs.load_w + heat_pump_power(inputs.heat_pump, state) - max(0.0, inputs.pv_available_w)
    if net > cap_w:
        battery_w = _clamp(net - cap_w, 0.0, hi)
    elif net < 0.0:
        battery_w = _clamp(net, lo, 0.0)
    else:
        battery_w = 0.0
    return Plan(battery_w=battery_w, pv_limit_w=None, sg_ready=state, grid_w=net - battery_w)


def _within_export_limit(plan: Plan, inputs: SiteInputs, limits: SiteLimits) -> Plan:
    """Curtail PV further if the plan would export more than the export limit allows."""
    floor = -limits.grid_export_w
    if plan.grid_w >= floor:
        return plan
    pv_now = inputs.pv_available_w if plan.pv_limit_w is None else plan.pv_limit_w
    cut = min(pv_now, floor - plan.grid_w)
    return Plan(
        battery_w=plan.battery_w,
        pv_limit_w=pv_now - cut,
        sg_ready=plan.sg_ready,
        grid_w=plan.grid_w + cut,
        clamped_by=plan.clamped_by,
    )


def follow(target_w: float, inputs: SiteInputs, limits: SiteLimits, cycle_s: float = 1.0) -> Plan:
    """Hold the cloud's grid power target as closely as the hard limits allow.

    The target is first clamped into the grid window ``[-export limit, import limit]``.
    Then battery, heat pump (within the comfort band) and, as a last resort for targets
    above what the site would draw, PV curtailment move the grid power towards it.
    ``clamped_by`` names every limit that kept the plan from the requested target.
    """
    if not math.isfinite(target_w):
        raise ValueError(f"target must be finite, got {target_w!r}")
    clamped: list[Limit] = []
    target = target_w
    if target > limits.grid_import_w:
        target = limits.grid_import_w
        clamped.append(Limit.GRID_LIMIT)
    elif target < -limits.grid_export_w:
        target = -limits.grid_export_w
        clamped.append(Limit.EXPORT_LIMIT)
    hp = inputs.heat_pump
    options: list[SgReady] | list[None] = heat_pump_options(hp, limits) or [None]
    plan, binding = _best(inputs, limits, cycle_s, target, options)
    if abs(plan.grid_w - target) > 1.0:
        if binding is not None and binding not in clamped:
            clamped.append(binding)
        # the heat pump could have helped but the comfort band forbade it
        all_states = [SgReady.NORMAL, SgReady.BLOCKED, SgReady.RECOMMENDED]
        if hp is not None and len(options) < len(all_states):
            unrestricted, _ = _best(inputs, limits, cycle_s, target, all_states)
            if abs(unrestricted.grid_w - target) < abs(plan.grid_w - target) - 1.0:
                clamped.append(Limit.COMFORT_BAND)
    plan = _within_export_limit(plan, inputs, limits)
    return Plan(
        battery_w=plan.battery_w,
        pv_limit_w=plan.pv_limit_w,
        sg_ready=plan.sg_ready,
        grid_w=plan.grid_w,
        clamped_by=tuple(clamped),
    )
