"""Heat pump on its own register map (:mod:`protocols.registers.heat_pump`), with a watchdog."""

from __future__ import annotations

import logging
from typing import Any

from pymodbus.constants import ExcCodes

from firmware_sim.devices.base import Device
from protocols.registers import heat_pump as hpmap

log = logging.getLogger("firmware_sim.heat_pump")

_SPAN = max(p.address + p.size for p in hpmap.HP_POINTS)
_AT: dict[int, hpmap.HpPoint] = {p.address + i: p for p in hpmap.HP_POINTS for i in range(p.size)}
_CONTROLS = [p for p in hpmap.HP_POINTS if p.writable]


class HeatPump(Device):
    """SG-Ready heat pump. Controls revert to defaults when the watchdog runs out."""

    @classmethod
    def create(cls, site_id: str, index: int, unit_id: int, phys: Any, clock: Any) -> HeatPump:
        dev = cls(
            kind="heat_pump", site_id=site_id, index=index, unit_id=unit_id, phys=phys, clock=clock
        )
        dev.start_addr = 0
        dev.good = [0] * _SPAN
        dev.writable = [False] * _SPAN
        dev.defined = [False] * _SPAN
        for addr, p in _AT.items():
            dev.defined[addr] = True
            dev.writable[addr] = p.writable
        # the map version and the identity stay readable even in garbage: they name the device
        dev.structural = {0} | {
            a for p in hpmap.IDENTITY_POINTS for a in range(p.address, p.address + p.size)
        }
        dev.rated_w = float(phys.p.hp_rated_w[index])
        dev.watchdog_deadline = None
        dev.watchdog_expired = False
        dev.online = True
        dev.set("map_version", hpmap.HP_MAP_VERSION)
        dev.set("rated_power_w", dev.rated_w)
        for name, text in dev.identity().items():
            dev.set(name, text)
        dev.reset_controls()
        dev.refresh(clock.time())
        return dev

    rated_w: float
    watchdog_deadline: float | None
    watchdog_expired: bool
    online: bool

    def identity(self) -> dict[str, str]:
        """Maker, model, serial, firmware: the same style as the SunSpec devices' model 1."""
        return {
            "manufacturer": "vpp-sim",
            "model": f"Heat pump {self.rated_w / 1000:.1f} kW",
            "serial_number": f"{self.site_id}-HP",
            "firmware_version": "1.0.0",
        }

    def set(self, name: str, value: float | str) -> None:
        p = hpmap.point(name)
        self.good[p.address : p.address + p.size] = hpmap.encode(p, value)

    def value(self, name: str) -> float:
        p = hpmap.point(name)
        return hpmap.decode(p, self.good[p.address : p.address + p.size])

    def reset_controls(self) -> None:
        for name, v in hpmap.CONTROL_DEFAULTS.items():
            self.set(name, v)
        self.watchdog_deadline = None
        self.watchdog_expired = False

    def set_online(self, online: bool) -> None:
        self.online = online

    def check_and_apply(self, address: int, values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        a = address
        while a < end:
            p = _AT.get(a)
            if p is None or not p.writable:
                return ExcCodes.ILLEGAL_ADDRESS
            if p.address != a or a + p.size > end:
                return ExcCodes.ILLEGAL_ADDRESS
            v = hpmap.decode(p, values[a - address : a - address + p.size])
            if p.minimum is not None and v < p.minimum - 1e-9:
                return ExcCodes.ILLEGAL_VALUE
            if p.maximum is not None and v > p.maximum + 1e-9:
                return ExcCodes.ILLEGAL_VALUE
            a += p.size
        self.write_good(address, values)
        now = self.clock.time()
        timeout = self.value("watchdog_timeout_s")
        self.watchdog_deadline = now + timeout if timeout > 0 else None
        self.watchdog_expired = False
        return None

    def apply_controls(self, now: float) -> None:
        if self.watchdog_deadline is not None and now >= self.watchdog_deadline:
            log.info("site=%s device=heat_pump watchdog expired: controls reverted", self.site_id)
            for name in ("sg_ready", "power_limit_w"):
                self.set(name, hpmap.CONTROL_DEFAULTS[name])
            self.watchdog_deadline = None
            self.watchdog_expired = True
        c, i = self.phys.ctl, self.index
        c.hp_sg[i] = int(self.value("sg_ready"))
        c.hp_setpoint_c[i] = self.value("room_setpoint_c")
        c.hp_limit_w[i] = self.value("power_limit_w")
        c.hp_boost_k[i] = self.value("boost_k")
        c.hp_online[i] = self.online

    def refresh(self, now: float) -> None:
        i, ph = self.index, self.phys
        w = float(ph.hp_w[i])
        if not self.online:
            state = 3
        elif w > 0:
            state = 1
        elif self.value("sg_ready") == 1 or self.value("power_limit_w") <= 0:
            state = 2
        else:
            state = 0
        remaining = 0.0
        if self.watchdog_deadline is not None:
            remaining = max(0.0, self.watchdog_deadline - now)
        self.set("operating_state", state)
        self.set("sg_ready_active", self.value("sg_ready"))
        self.set("power_w", w)
        self.set("energy_wh", float(ph.hp_wh[i]))
        self.set("indoor_temp_c", float(ph.t_in[i]))
        self.set("outdoor_temp_c", float(ph.t_out[i]))
        self.set("flow_temp_c", float(ph.flow_c[i]) if w > 0 else float(ph.t_in[i]) + 2.0)
        self.set("thermal_power_w", float(ph.hp_thermal_w[i]))
        self.set("cop", float(ph.cop[i]))
        self.set("watchdog_remaining_s", remaining)
        self.set("watchdog_expired", 1 if self.watchdog_expired else 0)
        self.publish()

    def control_state(self) -> dict[str, Any]:
        return {
            "sg_ready": int(self.value("sg_ready")),
            "room_setpoint_c": self.value("room_setpoint_c"),
            "power_limit_w": self.value("power_limit_w"),
            "watchdog_timeout_s": self.value("watchdog_timeout_s"),
            "watchdog_at": self.watchdog_deadline,
            "watchdog_expired": self.watchdog_expired,
        }
