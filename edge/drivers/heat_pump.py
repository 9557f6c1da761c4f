"""Heat pump driver on the vpp heat pump map (:mod:`protocols.registers.heat_pump`).

Each poll reads the measurement block (0..13) and the control block (100..105): 2 requests.

Volatile control points written (nothing else, ever): ``sg_ready`` (100),
``watchdog_timeout_s`` (103, set to the revert timeout) and ``watchdog_heartbeat`` (104, the
refresh). The room setpoint, power limit and boost are the homeowner's / installer's settings
and are never written by the control loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge.drivers.base import BadValues, Driver, VerifyError
from edge.drivers.write_policy import WriteResult
from protocols.messages import DeviceKind
from protocols.registers import heat_pump as hpmap

__all__ = ["HeatPumpDriver"]

# the identity text (200..) is read once by provisioning, not every poll
_MEAS = [p for p in hpmap.HP_POINTS if not p.writable and p not in hpmap.IDENTITY_POINTS]
_CTRL = [p for p in hpmap.HP_POINTS if p.writable]
_MEAS_ADDR = min(p.address for p in _MEAS)
_MEAS_COUNT = max(p.address + p.size for p in _MEAS) - _MEAS_ADDR
_CTRL_ADDR = min(p.address for p in _CTRL)
_CTRL_COUNT = max(p.address + p.size for p in _CTRL) - _CTRL_ADDR
_A = {p.name: p.address for p in hpmap.HP_POINTS}


class HeatPumpDriver(Driver):
    """SG-Ready heat pump. ``set_sg_ready(1..4)`` under the device's watchdog."""

    kind = DeviceKind.HEAT_PUMP
    WRITES = ("sg_ready", "watchdog_timeout_s", "watchdog_heartbeat")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raw: dict[str, float] = {}
        self._beat = 0

    def _deadband(self, deadband_w: float) -> float:
        return 0.5  # states are integers: any change is a change

    async def _read(self) -> dict[str, float | None]:
        meas = await self._r(_MEAS_ADDR, _MEAS_COUNT)
        ctrl = await self._r(_CTRL_ADDR, _CTRL_COUNT)
        raw: dict[str, float] = {}
        for pts, base, regs in ((_MEAS, _MEAS_ADDR, meas), (_CTRL, _CTRL_ADDR, ctrl)):
            for p in pts:
                off = p.address - base
                raw[p.name] = float(hpmap.decode(p, regs[off : off + p.size]))
        values = self._values(raw)
        self.raw = raw
        return values

    @staticmethod
    def _check(raw: Mapping[str, float], name: str, lo: float, hi: float) -> float:
        v = raw[name]
        if not lo <= v <= hi:
            raise BadValues(f"{name} = {v:g} outside [{lo:g}, {hi:g}]")
        return v

    def _values(self, raw: Mapping[str, float]) -> dict[str, float | None]:
        c = self._check
        if raw["map_version"] != hpmap.HP_MAP_VERSION:
            raise BadValues(
                f"map_version = {raw['map_version']:g}, expected {hpmap.HP_MAP_VERSION}"
            )
        rated = c(raw, "rated_power_w", 100, 30000)
        for p in _CTRL:
            if p.minimum is not None and p.maximum is not None:
                c(raw, p.name, p.minimum, p.maximum)
        return {
            "power_w": c(raw, "power_w", 0, 1.5 * rated + 100),
            "indoor_c": c(raw, "indoor_temp_c", -30, 60),
            "outdoor_c": c(raw, "outdoor_temp_c", -50, 60),
            "sg_ready": c(raw, "sg_ready_active", 1, 4),
            "setpoint_c": raw["room_setpoint_c"],
            "boost_k": raw["boost_k"],
            "power_limit_w": raw["power_limit_w"],
            "rated_w": rated,
            "energy_wh": raw["energy_wh"],
            "operating_state": c(raw, "operating_state", 0, 4),
            "sg_ready_requested": raw["sg_ready"],
            "flow_c": c(raw, "flow_temp_c", -30, 95),
            "thermal_w": c(raw, "thermal_power_w", 0, 10 * rated + 100),
            "cop": c(raw, "cop", 0, 15),
            "watchdog_expired": c(raw, "watchdog_expired", 0, 1),
            "watchdog_remaining_s": raw["watchdog_remaining_s"],
        }

    async def set_sg_ready(self, state: int) -> WriteResult:
        """Request SG-Ready ``state`` (1 blocked, 2 normal, 3 recommended on, 4 forced on)."""
        return await self._command(state)

    async def _prepare(self) -> None:
        if not self.raw:
            await self._read()

    def _effective(self, target: float | None) -> float | None:
        if target is None:
            return None
        if target not in (1, 2, 3, 4):
            raise ValueError(f"SG-Ready state must be 1..4, got {target!r}")
        return float(target)

    def _held(self, values: Mapping[str, float | None]) -> object:
        held = values.get("sg_ready_requested")
        return None if held == 2 and self.guard.written is None else held

    async def _write(self, target: float | None, *, refresh: bool) -> None:
        state = 2 if target is None else int(target)
        t = min(3600, round(self.revert_timeout_s))
        expected = {_A["sg_ready"]: state, _A["watchdog_timeout_s"]: t}
        if self.raw.get("watchdog_timeout_s") != t:
            await self._w(_A["watchdog_timeout_s"], [t])
        if refresh and self.raw.get("sg_ready") == state:
            self._beat = (self._beat + 1) & 0xFFFF
            await self._w(_A["watchdog_heartbeat"], [self._beat])
            expected[_A["watchdog_heartbeat"]] = self._beat
        else:
            await self._w(_A["sg_ready"], [state])
        regs = await self._r(_CTRL_ADDR, _CTRL_COUNT)
        bad = {
            a: (v, regs[a - _CTRL_ADDR]) for a, v in expected.items() if regs[a - _CTRL_ADDR] != v
        }
        if bad:
            raise VerifyError(", ".join(f"@{a}: wrote {w}, reads {r}" for a, (w, r) in bad.items()))
        self.raw["sg_ready"] = state
        self.raw["watchdog_timeout_s"] = t
