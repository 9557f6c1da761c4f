"""The heat pump's register map (vpp heat pump map, version 1), as data.

No SunSpec model exists for heat pumps. Real units expose SG-Ready (two contacts, four states)
and a vendor Modbus map (Stiebel Eltron ISG, Nibe S-series, Vaillant, ...). This map mirrors
what those offer, on its own Modbus unit id (see :data:`protocols.registers.UNIT_IDS`).

* One address space of 16-bit registers, readable with function 3 (holding) or 4 (input):
  measurements at 0..15 are read-only, controls at 100..105 are read/write (functions 6/16),
  identity at 200..255 is read-only text (maker, model, serial, firmware version: what an
  installer's scan shows, like SunSpec's common model 1).
* Writing a read-only or undefined register answers Modbus exception 2 (illegal data address);
  a value outside a point's range answers exception 3 (illegal data value) and changes nothing.
* Physical value = raw * ``scale``; signed points are two's complement.
* Watchdog: while ``watchdog_timeout_s`` > 0, the controls (SG-Ready state and power limit)
  stay in force only while the controller keeps writing: any write to a control register,
  typically ``watchdog_heartbeat``, restarts the watchdog. When it expires the heat pump falls
  back to SG-Ready 2 (normal) and its rated power, and ``watchdog_expired`` reads 1 until the
  next control write. 0 disables the watchdog (not recommended for remote control).

SG-Ready states (``sg_ready``): 1 = blocked (utility lock, compressor off), 2 = normal
(thermostat), 3 = recommended on (raises the room setpoint by ``boost_k``), 4 = forced on
(runs at its power limit until the room reaches setpoint + ``max_overheat_k``).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.registers.sunspec import decode_raw, encode_raw

__all__ = [
    "CONTROL_DEFAULTS",
    "HP_MAP_VERSION",
    "HP_POINTS",
    "IDENTITY_POINTS",
    "MAX_OVERHEAT_K",
    "OPERATING_STATES",
    "SG_READY_STATES",
    "HpPoint",
    "decode",
    "decode_text",
    "encode",
    "point",
]

HP_MAP_VERSION = 1

SG_READY_STATES: dict[int, str] = {
    1: "blocked",
    2: "normal",
    3: "recommended_on",
    4: "forced_on",
}

OPERATING_STATES: dict[int, str] = {
    0: "off",  # no demand
    1: "heating",  # compressor running
    2: "blocked",  # SG-Ready 1 or power limit 0
    3: "starting",  # after a reboot
    4: "fault",
}


@dataclass(frozen=True, slots=True)
class HpPoint:
    """One point of the heat pump map."""

    address: int
    name: str
    type: str  # "uint16" | "int16" | "uint32" | "string"
    scale: float  # physical = raw * scale
    unit: str
    access: str  # "r" | "rw"
    minimum: float | None  # physical range accepted on write (rw points)
    maximum: float | None
    doc: str
    length: int = 1  # registers of a "string" point (two characters each)

    @property
    def size(self) -> int:
        if self.type == "string":
            return self.length
        return 2 if self.type == "uint32" else 1

    @property
    def writable(self) -> bool:
        return self.access == "rw"


#: The map. Addresses are 0-based protocol addresses.
HP_POINTS: tuple[HpPoint, ...] = (
    # --- measurements / state (read-only) ---
    HpPoint(0, "map_version", "uint16", 1, "", "r", None, None, "this map's version (1)"),
    HpPoint(
        1,
        "operating_state",
        "uint16",
        1,
        "",
        "r",
        None,
        None,
        "0 off, 1 heating, 2 blocked, 3 starting, 4 fault",
    ),
    HpPoint(
        2,
        "sg_ready_active",
        "uint16",
        1,
        "",
        "r",
        None,
        None,
        "SG-Ready state in force (2 after a watchdog expiry)",
    ),
    HpPoint(3, "power_w", "uint16", 1, "W", "r", None, None, "electrical input power"),
    HpPoint(
        4,
        "energy_wh",
        "uint32",
        1,
        "Wh",
        "r",
        None,
        None,
        "electrical energy consumed, lifetime (high word first)",
    ),
    HpPoint(6, "indoor_temp_c", "int16", 0.1, "degC", "r", None, None, "room temperature"),
    HpPoint(7, "outdoor_temp_c", "int16", 0.1, "degC", "r", None, None, "outdoor temperature"),
    HpPoint(8, "flow_temp_c", "int16", 0.1, "degC", "r", None, None, "heating flow temperature"),
    HpPoint(9, "thermal_power_w", "uint16", 1, "W", "r", None, None, "heat delivered"),
    HpPoint(10, "cop", "uint16", 0.01, "", "r", None, None, "coefficient of performance now"),
    HpPoint(
        11, "rated_power_w", "uint16", 1, "W", "r", None, None, "maximum electrical input power"
    ),
    HpPoint(
        12,
        "watchdog_remaining_s",
        "uint16",
        1,
        "s",
        "r",
        None,
        None,
        "seconds until the watchdog expires (0 = disabled or expired)",
    ),
    HpPoint(
        13,
        "watchdog_expired",
        "uint16",
        1,
        "",
        "r",
        None,
        None,
        "1 while the controls are reverted by the watchdog",
    ),
    # --- controls (read/write) ---
    HpPoint(
        100,
        "sg_ready",
        "uint16",
        1,
        "",
        "rw",
        1,
        4,
        "SG-Ready state requested: 1 blocked, 2 normal, 3 recommended on, 4 forced on",
    ),
    HpPoint(
        101, "room_setpoint_c", "int16", 0.1, "degC", "rw", 15.0, 26.0, "room temperature setpoint"
    ),
    HpPoint(
        102,
        "power_limit_w",
        "uint16",
        1,
        "W",
        "rw",
        0,
        10000,
        "maximum electrical input (clipped to rated power); 0 keeps the compressor off",
    ),
    HpPoint(
        103, "watchdog_timeout_s", "uint16", 1, "s", "rw", 0, 3600, "control watchdog; 0 = disabled"
    ),
    HpPoint(
        104,
        "watchdog_heartbeat",
        "uint16",
        1,
        "",
        "rw",
        0,
        65535,
        "write any value to restart the watchdog",
    ),
    HpPoint(105, "boost_k", "uint16", 0.1, "K", "rw", 0.0, 5.0, "setpoint raise under SG-Ready 3"),
    # --- identity (read-only text, UTF-8, NUL-padded; map version 1 from 2026-11) ---
    HpPoint(200, "manufacturer", "string", 1, "", "r", None, None, "maker", 16),
    HpPoint(216, "model", "string", 1, "", "r", None, None, "model name", 16),
    HpPoint(232, "serial_number", "string", 1, "", "r", None, None, "serial number", 16),
    HpPoint(248, "firmware_version", "string", 1, "", "r", None, None, "firmware version", 8),
)

#: The identity block (text), read once by a scan; the numeric points are the rest.
IDENTITY_POINTS: tuple[HpPoint, ...] = tuple(p for p in HP_POINTS if p.type == "string")

_BY_NAME = {p.name: p for p in HP_POINTS}

#: Defaults of the control points after power-up (and after a reboot).
CONTROL_DEFAULTS: dict[str, float] = {
    "sg_ready": 2,
    "room_setpoint_c": 21.0,
    "power_limit_w": 10000,
    "watchdog_timeout_s": 0,
    "watchdog_heartbeat": 0,
    "boost_k": 2.0,
}

#: How far forced-on (SG-Ready 4) may overheat the room before the unit stops itself.
MAX_OVERHEAT_K = 3.0


def point(name: str) -> HpPoint:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"heat pump map has no point {name!r}") from None


def encode(p: HpPoint, value: float | str) -> list[int]:
    """Physical value (text for a string point) -> registers (saturated to the type's range)."""
    if p.type == "string":  # the same text encoding as SunSpec's (model 1's maker, serial)
        return encode_raw("string", str(value), p.size)
    assert not isinstance(value, str)
    raw = round(value / p.scale)
    if p.type == "int16":
        raw = min(32767, max(-32768, raw))
        return [raw & 0xFFFF]
    if p.type == "uint16":
        return [min(0xFFFF, max(0, raw))]
    raw = min(0xFFFFFFFF, max(0, raw))
    return [raw >> 16, raw & 0xFFFF]


def decode(p: HpPoint, regs: list[int]) -> float:
    """Registers -> physical value (numeric points; text: :func:`decode_text`)."""
    if p.type == "string":
        raise ValueError(f"{p.name} is text: use decode_text")
    if p.type == "int16":
        raw = regs[0] - 0x10000 if regs[0] & 0x8000 else regs[0]
    elif p.type == "uint16":
        raw = regs[0]
    else:
        raw = (regs[0] << 16) | regs[1]
    value = raw * p.scale
    return round(value, 2) if p.scale != 1 else value


def decode_text(p: HpPoint, regs: list[int]) -> str | None:
    """Registers of a string point -> text (None when empty: not set by the maker)."""
    text = decode_raw("string", [r & 0xFFFF for r in regs[: p.size]])
    return (text or "").strip() or None
