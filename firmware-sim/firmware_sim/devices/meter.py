"""Grid meter at the connection point: SunSpec 1 + 203 (three-phase wye). W + = import."""

from __future__ import annotations

from typing import Any, ClassVar

from firmware_sim.devices.inverter import grid_wiggle
from firmware_sim.devices.sunspec_base import Key, SunSpecDevice


class Meter(SunSpecDevice):
    KIND = "meter"
    WRITABLE: ClassVar[dict[Key, tuple[int, int]]] = {}

    def static_values(self) -> dict[int, dict[str, Any]]:
        return {
            1: self.common("Grid meter 3ph", f"{self.site_id}-MTR"),
            203: {
                "A_SF": -2,
                "V_SF": -1,
                "Hz_SF": -2,
                "W_SF": 0,
                "VA_SF": 0,
                "TotWh_SF": 0,
                "Evt": 0,
            },
        }

    def reset_controls(self) -> None:
        """A meter has no control points: nothing to reset after a reboot."""

    def apply_controls(self, now: float) -> None:
        """A meter has no control points: nothing to apply."""

    def measure(self, now: float) -> dict[Key, Any]:
        i, ph = self.index, self.phys
        w = float(ph.grid_w[i])
        volts, hz = grid_wiggle(now, i * 0.7 + 2.0)
        v = round(volts * 10)
        a = round(w / (3 * volts) * 100)
        wph = round(w / 3)
        return {
            (203, "A"): 3 * a,
            (203, "AphA"): a,
            (203, "AphB"): a,
            (203, "AphC"): a,
            (203, "PhV"): v,
            (203, "PhVphA"): v,
            (203, "PhVphB"): v + 2,
            (203, "PhVphC"): v - 1,
            (203, "PPV"): round(v * 1.732),
            (203, "PhVphAB"): round(v * 1.732),
            (203, "PhVphBC"): round(v * 1.732) + 2,
            (203, "PhVphCA"): round(v * 1.732) - 2,
            (203, "Hz"): round(hz * 100),
            (203, "W"): round(w),
            (203, "WphA"): wph,
            (203, "WphB"): wph,
            (203, "WphC"): round(w) - 2 * wph,
            (203, "VA"): round(abs(w)),
            (203, "TotWhExp"): round(float(ph.grid_exp_wh[i])),
            (203, "TotWhImp"): round(float(ph.grid_imp_wh[i])),
        }
