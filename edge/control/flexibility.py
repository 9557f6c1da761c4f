"""The site's flexibility now: the grid power range it can hold, and for how long.

Reported every telemetry interval (``protocols.messages.Flexibility``) and summed by the
cloud into pool flexibility. It is computed from the same hard limits as the plans
(:mod:`edge.control.plan`), so the cloud is never offered what a dispatch would be clamped to.

* ``p_min_w``: battery at its present discharge bound, heat pump blocked if the comfort band
  allows, PV uncurtailed - but never below the export limit.
* ``p_max_w``: battery at its present charge bound, heat pump boosted if the band allows, PV
  fully curtailed - but never above the import (fuse) limit.
* ``e_deliver_wh`` / ``e_absorb_wh``: the battery's energy above its SoC floor / room below its
  ceiling, plus the heat pump's energy to shed / add before the house leaves the comfort band.
  PV curtailment is limited by the sun, not by stored energy, and is not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.control.plan import (
    SgReady,
    SiteInputs,
    SiteLimits,
    battery_window,
    heat_pump_options,
    heat_pump_power,
)
from edge.control.thermal import ThermalModel, time_in_band
from protocols.messages import Flexibility

__all__ = ["SiteFlexibility", "flexibility"]


@dataclass(frozen=True, slots=True)
class SiteFlexibility:
    p_min_w: float
    p_max_w: float
    e_absorb_wh: float
    e_deliver_wh: float
    hp_up_w: float | None = None
    hp_down_w: float | None = None
    hp_up_s: float | None = None
    hp_down_s: float | None = None

    def to_message(self) -> Flexibility:
        return Flexibility(
            p_min_w=self.p_min_w,
            p_max_w=self.p_max_w,
            e_absorb_wh=self.e_absorb_wh,
            e_deliver_wh=self.e_deliver_wh,
            hp_up_w=self.hp_up_w,
            hp_down_w=self.hp_down_w,
            hp_up_s=self.hp_up_s,
            hp_down_s=self.hp_down_s,
        )


def flexibility(
    inputs: SiteInputs,
    limits: SiteLimits,
    outdoor_c: float | None = None,
    thermal: ThermalModel | None = None,
    cycle_s: float = 1.0,
    horizon_s: float = 24 * 3600.0,
) -> SiteFlexibility:
    """The range and energies the site offers now (see the module docstring)."""
    lo, hi, _, _ = battery_window(inputs.battery, limits, cycle_s)
    hp = inputs.heat_pump
    options = heat_pump_options(hp, limits)
    normal = SgReady.NORMAL if hp is not None else None
    down_state = SgReady.BLOCKED if SgReady.BLOCKED in options else normal
    up_state = SgReady.RECOMMENDED if SgReady.RECOMMENDED in options else normal
    pv = max(0.0, inputs.pv_available_w)
    lowest = inputs.load_w + heat_pump_power(hp, down_state) - pv - hi
    highest = inputs.load_w + heat_pump_power(hp, up_state) - lo  # PV fully curtailed
    p_min = max(lowest, -limits.grid_export_w)
    p_max = min(highest, limits.grid_import_w)
    if p_min > p_max:  # the site cannot stay inside its grid window: offer nothing
        p_min = p_max = min(max(lowest, -limits.grid_export_w), limits.grid_import_w)

    battery = inputs.battery
    if battery is not None:
        deliver_wh = max(0.0, (battery.soc_pct - limits.soc_min_pct) / 100 * battery.capacity_wh)
        absorb_wh = max(0.0, (limits.soc_max_pct - battery.soc_pct) / 100 * battery.capacity_wh)
    else:
        deliver_wh = absorb_wh = 0.0

    hp_up_w = hp_down_w = hp_up_s = hp_down_s = None
    if hp is not None:
        model = thermal or ThermalModel()
        out = hp.indoor_c - 10.0 if outdoor_c is None else outdoor_c
        band = (limits.comfort_min_c, limits.comfort_max_c)
        hp_down_w = max(0.0, hp.normal_w - heat_pump_power(hp, down_state))
        hp_up_w = max(0.0, heat_pump_power(hp, up_state) - hp.normal_w)
        hp_down_s = (
            time_in_band(model, hp.indoor_c, out, 0.0, *band, horizon_s) if hp_down_w else 0.0
        )
        hp_up_s = (
            time_in_band(model, hp.indoor_c, out, hp.boost_w, *band, horizon_s) if hp_up_w else 0.0
        )
        deliver_wh += hp_down_w * hp_down_s / 3600.0
        absorb_wh += hp_up_w * hp_up_s / 3600.0
    return SiteFlexibility(
        p_min_w=p_min,
        p_max_w=p_max,
        e_absorb_wh=absorb_wh,
        e_deliver_wh=deliver_wh,
        hp_up_w=hp_up_w,
        hp_down_w=hp_down_w,
        hp_up_s=hp_up_s,
        hp_down_s=hp_down_s,
    )
