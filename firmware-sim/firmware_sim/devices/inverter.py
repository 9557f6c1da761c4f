"""PV inverter: SunSpec 1 + 103 + 120 + 121 + 123, active-power limit with revert and ramp."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from firmware_sim.devices.sunspec_base import Key, SunSpecDevice

log = logging.getLogger("firmware_sim.inverter")

# scale factors this device uses (read by clients from the *_SF registers)
A_SF, V_SF, HZ_SF, TMP_SF, LIM_SF, PF_SF = -2, -1, -2, -1, -1, -3

ST_OFF, ST_SLEEPING, ST_STARTING, ST_MPPT, ST_THROTTLED = 1, 2, 3, 4, 5


def grid_wiggle(now: float, phase: float) -> tuple[float, float]:
    """A plausible grid voltage and frequency (deterministic in time)."""
    volts = 230.0 + 3.0 * math.sin(now / 53.0 + phase)
    hz = 50.0 + 0.03 * math.sin(now / 17.0 + phase) + 0.01 * math.sin(now / 3.1)
    return volts, hz


class Inverter(SunSpecDevice):
    KIND = "inverter"
    WRITABLE: ClassVar[dict[Key, tuple[int, int]]] = {
        (123, "Conn"): (0, 1),
        (123, "WMaxLimPct"): (0, 1000),  # 0.0 .. 100.0 % (WMaxLimPct_SF = -1)
        (123, "WMaxLimPct_RvrtTms"): (0, 28800),
        (123, "WMaxLimPct_RmpTms"): (0, 3600),
        (123, "WMaxLim_Ena"): (0, 1),
    }

    def init_state(self) -> None:
        self.wmax = float(self.phys.p.pv_peak_w[self.index])
        self.limit_deadline: float | None = None
        self.eff_limit_w = self.wmax  # ramped limit in force
        self.last_t = self.clock.time()
        self.online = True

    def static_values(self) -> dict[int, dict[str, Any]]:
        w = round(self.wmax)
        return {
            1: self.common(f"PV inverter {w / 1000:.1f} kW", f"{self.site_id}-INV"),
            103: {
                "A_SF": A_SF,
                "V_SF": V_SF,
                "W_SF": 0,
                "Hz_SF": HZ_SF,
                "VA_SF": 0,
                "WH_SF": 0,
                "DCA_SF": -2,
                "DCV_SF": -1,
                "DCW_SF": 0,
                "Tmp_SF": TMP_SF,
                "Evt1": 0,
                "Evt2": 0,
            },
            120: {
                "DERTyp": 4,
                "WRtg": w,
                "WRtg_SF": 0,
                "VARtg": w,
                "VARtg_SF": 0,
                "VArRtgQ1": w // 2,
                "VArRtgQ2": w // 2,
                "VArRtgQ3": -(w // 2),
                "VArRtgQ4": -(w // 2),
                "VArRtg_SF": 0,
                "ARtg": round(w / 690 * 10),
                "ARtg_SF": -1,
                "PFRtgQ1": 800,
                "PFRtgQ2": 800,
                "PFRtgQ3": -800,
                "PFRtgQ4": -800,
                "PFRtg_SF": PF_SF,
            },
            121: {
                "WMax": w,
                "VRef": 2300,
                "VRefOfs": 0,
                "WMax_SF": 0,
                "VRef_SF": V_SF,
                "VRefOfs_SF": 0,
            },
            123: self.default_controls()
            | {
                "OutPFSet": 1000,
                "OutPFSet_Ena": 0,
                "VArPct_Ena": 0,
                "WMaxLimPct_SF": LIM_SF,
                "OutPFSet_SF": PF_SF,
            },
        }

    @staticmethod
    def default_controls() -> dict[str, int]:
        return {
            "Conn": 1,
            "WMaxLimPct": 1000,
            "WMaxLimPct_RvrtTms": 0,
            "WMaxLimPct_RmpTms": 0,
            "WMaxLim_Ena": 0,
        }

    def reset_controls(self) -> None:
        for name, raw in self.default_controls().items():
            self.put(123, name, raw)
        self.limit_deadline = None
        self.eff_limit_w = self.wmax

    def set_online(self, online: bool) -> None:
        self.online = online

    def on_write(self, keys: list[Key], now: float) -> None:
        names = {n for _, n in keys}
        if names & {"WMaxLimPct", "WMaxLim_Ena"}:
            rvrt = self.get(123, "WMaxLimPct_RvrtTms") or 0
            self.limit_deadline = now + rvrt if rvrt > 0 and self.get(123, "WMaxLim_Ena") else None
            log.debug(
                "site=%s device=inverter limit %s%% ena=%s revert in %ss",
                self.site_id,
                self.limit_pct(),
                self.get(123, "WMaxLim_Ena"),
                rvrt,
            )

    def limit_pct(self) -> float:
        return (self.get(123, "WMaxLimPct") or 0) * 10.0**LIM_SF

    def target_limit_w(self) -> float:
        return self.limit_pct() / 100.0 * self.wmax if self.get(123, "WMaxLim_Ena") else self.wmax

    def apply_controls(self, now: float) -> None:
        if self.limit_deadline is not None and now >= self.limit_deadline:
            log.info("site=%s device=inverter power limit reverted (not refreshed)", self.site_id)
            self.put(123, "WMaxLim_Ena", 0)
            self.limit_deadline = None
        dt = max(0.0, now - self.last_t)
        self.last_t = now
        target = self.target_limit_w()
        rmp = self.get(123, "WMaxLimPct_RmpTms") or 0
        if rmp > 0:
            step = self.wmax / rmp * dt
            self.eff_limit_w += max(-step, min(step, target - self.eff_limit_w))
        else:
            self.eff_limit_w = target
        ctl = self.phys.ctl
        limited = self.get(123, "WMaxLim_Ena") or self.eff_limit_w < self.wmax - 0.5
        ctl.pv_limit_w[self.index] = self.eff_limit_w if limited else math.inf
        ctl.pv_online[self.index] = self.online and self.get(123, "Conn") == 1

    def measure(self, now: float) -> dict[Key, Any]:
        i, ph = self.index, self.phys
        pv = float(ph.pv_w[i])
        volts, hz = grid_wiggle(now, i * 0.7)
        amps = pv / (3 * volts)
        dcv = 380.0 if pv > 0 else 0.0
        dcw = pv / 0.97
        if not self.online:
            st = ST_STARTING
        elif self.get(123, "Conn") != 1:
            st = ST_OFF
        elif pv < 1.0:
            st = ST_SLEEPING
        elif ph.ctl.pv_limit_w[i] < math.inf and pv >= ph.ctl.pv_limit_w[i] - 1.0:
            st = ST_THROTTLED
        else:
            st = ST_MPPT
        a_raw = round(amps / 10.0**A_SF)
        v_raw = round(volts / 10.0**V_SF)
        return {
            (103, "A"): 3 * a_raw,
            (103, "AphA"): a_raw,
            (103, "AphB"): a_raw,
            (103, "AphC"): a_raw,
            (103, "PhVphA"): v_raw,
            (103, "PhVphB"): v_raw + 3,
            (103, "PhVphC"): v_raw - 2,
            (103, "W"): round(pv),
            (103, "VA"): round(pv),
            (103, "Hz"): round(hz / 10.0**HZ_SF),
            (103, "WH"): round(float(ph.pv_wh[i])),
            (103, "DCA"): round((dcw / dcv if dcv else 0.0) * 100),
            (103, "DCV"): round(dcv * 10),
            (103, "DCW"): round(dcw),
            (103, "TmpCab"): round((25.0 + 15.0 * pv / self.wmax) * 10),
            (103, "St"): st,
        }

    def control_state(self) -> dict[str, Any]:
        return {
            "conn": self.get(123, "Conn"),
            "limit_enabled": bool(self.get(123, "WMaxLim_Ena")),
            "limit_pct": self.limit_pct(),
            "limit_revert_s": self.get(123, "WMaxLimPct_RvrtTms"),
            "limit_ramp_s": self.get(123, "WMaxLimPct_RmpTms"),
            "limit_revert_at": self.limit_deadline,
            "effective_limit_w": self.eff_limit_w,
            "wmax_w": self.wmax,
        }
