"""Battery (storage) unit: SunSpec 1 + 103 + 120 + 124, setpoint window with revert timeout.

See :mod:`protocols.registers.sunspec` for how the 124 window maps to a power setpoint.
"""

from __future__ import annotations

import logging
from typing import Any

from firmware_sim.devices.inverter import grid_wiggle
from firmware_sim.devices.sunspec_base import Key, SunSpecDevice

log = logging.getLogger("firmware_sim.battery")

RTE_SF = -2  # InOutWRte_SF: InWRte/OutWRte in 0.01 %
SOC_SF = -1  # ChaState_SF
NOMINAL_V = 51.2

CHA_OFF, CHA_EMPTY, CHA_DISCHARGING, CHA_CHARGING, CHA_FULL, CHA_HOLDING = 1, 2, 3, 4, 5, 6
CONTROL_POINTS = frozenset({"StorCtl_Mod", "InWRte", "OutWRte", "InOutWRte_RvrtTms"})


class Battery(SunSpecDevice):
    KIND = "battery"

    def init_state(self) -> None:
        self.max_w = float(self.phys.p.bat_max_w[self.index])
        self.capacity_wh = float(self.phys.p.bat_capacity_wh[self.index])
        self.rte_deadline: float | None = None
        self.online = True
        # ranges depend on this unit's rating
        self.ranges = {
            (124, "WChaMax"): (0, round(self.max_w)),
            (124, "StorCtl_Mod"): (0, 3),
            (124, "InWRte"): (-10000, 10000),  # -100.00 .. 100.00 % of WChaMax
            (124, "OutWRte"): (-10000, 10000),
            (124, "InOutWRte_RvrtTms"): (0, 28800),
        }

    def static_values(self) -> dict[int, dict[str, Any]]:
        w, wh = round(self.max_w), round(self.capacity_wh)
        return {
            1: self.common(f"Battery {wh / 1000:.1f} kWh", f"{self.site_id}-BAT"),
            103: {
                "A_SF": -2,
                "V_SF": -1,
                "W_SF": 0,
                "Hz_SF": -2,
                "WH_SF": 0,
                "DCA_SF": -1,
                "DCV_SF": -1,
                "DCW_SF": 0,
                "Tmp_SF": -1,
                "Evt1": 0,
                "Evt2": 0,
            },
            120: {
                "DERTyp": 82,
                "WRtg": w,
                "WRtg_SF": 0,
                "VARtg": w,
                "VARtg_SF": 0,
                "VArRtgQ1": 0,
                "VArRtgQ2": 0,
                "VArRtgQ3": 0,
                "VArRtgQ4": 0,
                "VArRtg_SF": 0,
                "ARtg": round(w / 690 * 10),
                "ARtg_SF": -1,
                "PFRtgQ1": 1000,
                "PFRtgQ2": 1000,
                "PFRtgQ3": -1000,
                "PFRtgQ4": -1000,
                "PFRtg_SF": -3,
                "WHRtg": wh,
                "WHRtg_SF": 0,
                "AhrRtg": round(wh / NOMINAL_V * 10),
                "AhrRtg_SF": -1,
                "MaxChaRte": w,
                "MaxChaRte_SF": 0,
                "MaxDisChaRte": w,
                "MaxDisChaRte_SF": 0,
            },
            124: {
                "WChaMax": w,
                "WChaGra": 50,
                "WDisChaGra": 50,
                "WChaMax_SF": 0,
                "WChaDisChaGra_SF": 0,
                "ChaState_SF": SOC_SF,
                "StorAval_SF": -1,
                "InBatV_SF": -1,
                "InOutWRte_SF": RTE_SF,
            }
            | self.default_controls(),
        }

    @staticmethod
    def default_controls() -> dict[str, int]:
        return {"StorCtl_Mod": 0, "InWRte": 10000, "OutWRte": 10000, "InOutWRte_RvrtTms": 0}

    def reset_controls(self) -> None:
        for name, raw in self.default_controls().items():
            self.put(124, name, raw)
        self.put(124, "WChaMax", round(self.max_w))
        self.rte_deadline = None

    def set_online(self, online: bool) -> None:
        self.online = online

    def on_write(self, keys: list[Key], now: float) -> None:
        names = {n for _, n in keys}
        if names & CONTROL_POINTS:
            rvrt = self.get(124, "InOutWRte_RvrtTms") or 0
            active = (self.get(124, "StorCtl_Mod") or 0) != 0
            self.rte_deadline = now + rvrt if rvrt > 0 and active else None
            lo, hi = self.window_w()
            log.debug(
                "site=%s device=battery window [%.0f, %.0f] W revert in %ss",
                self.site_id,
                lo,
                hi,
                rvrt,
            )

    def window_w(self) -> tuple[float, float]:
        """The commanded window of battery power, W, + = discharge."""
        wchamax = float(self.get(124, "WChaMax") or 0)
        mod = self.get(124, "StorCtl_Mod") or 0
        scale = 10.0**RTE_SF / 100.0 * wchamax
        lo = -(self.get(124, "InWRte") or 0) * scale if mod & 1 else -wchamax
        hi = (self.get(124, "OutWRte") or 0) * scale if mod & 2 else wchamax
        return lo, hi

    def apply_controls(self, now: float) -> None:
        if self.rte_deadline is not None and now >= self.rte_deadline:
            log.info("site=%s device=battery setpoint reverted (not refreshed)", self.site_id)
            for name, raw in self.default_controls().items():
                if name != "InOutWRte_RvrtTms":
                    self.put(124, name, raw)
            self.rte_deadline = None
        lo, hi = self.window_w()
        c, i = self.phys.ctl, self.index
        c.bat_lo_w[i], c.bat_hi_w[i] = lo, hi
        c.bat_wchamax_w[i] = float(self.get(124, "WChaMax") or 0)
        c.bat_online[i] = self.online

    def measure(self, now: float) -> dict[Key, Any]:
        i, ph = self.index, self.phys
        w = float(ph.bat_w[i])
        soc = float(ph.soc_pct[i])
        volts, hz = grid_wiggle(now, i * 0.7 + 1.0)
        bat_v = NOMINAL_V - 3.0 + 6.0 * soc / 100.0
        if not self.online:
            st, cha = 3, CHA_OFF
        else:
            st = 4 if abs(w) >= 1.0 else 8
            if soc <= 0.5 and w >= -1.0:
                cha = CHA_EMPTY
            elif soc >= 99.5 and w <= 1.0:
                cha = CHA_FULL
            else:
                cha = CHA_DISCHARGING if w >= 1.0 else CHA_CHARGING if w <= -1.0 else CHA_HOLDING
        a_raw = round(abs(w) / (3 * volts) * 100)
        return {
            (103, "A"): 3 * a_raw,
            (103, "AphA"): a_raw,
            (103, "AphB"): a_raw,
            (103, "AphC"): a_raw,
            (103, "PhVphA"): round(volts * 10),
            (103, "PhVphB"): round(volts * 10) + 2,
            (103, "PhVphC"): round(volts * 10) - 3,
            (103, "W"): round(w),
            (103, "Hz"): round(hz * 100),
            (103, "WH"): round(float(ph.bat_dis_wh[i])),
            (103, "DCV"): round(bat_v * 10),
            (103, "DCA"): round(abs(w) / bat_v * 10),
            (103, "DCW"): round(w),
            (103, "TmpCab"): round((24.0 + 6.0 * abs(w) / self.max_w) * 10),
            (103, "St"): st,
            (124, "ChaState"): round(soc / 10.0**SOC_SF),
            (124, "StorAval"): round(float(ph.soc_wh[i]) / NOMINAL_V * 10),
            (124, "InBatV"): round(bat_v * 10),
            (124, "ChaSt"): cha,
        }

    def control_state(self) -> dict[str, Any]:
        lo, hi = self.window_w()
        return {
            "stor_ctl_mod": self.get(124, "StorCtl_Mod"),
            "in_w_rte_pct": (self.get(124, "InWRte") or 0) * 10.0**RTE_SF,
            "out_w_rte_pct": (self.get(124, "OutWRte") or 0) * 10.0**RTE_SF,
            "w_cha_max_w": self.get(124, "WChaMax"),
            "revert_s": self.get(124, "InOutWRte_RvrtTms"),
            "revert_at": self.rte_deadline,
            "window_w": [lo, hi],
        }
