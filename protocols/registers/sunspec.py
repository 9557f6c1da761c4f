"""SunSpec models per device kind, and register images built from pysunspec2's definitions.

Which models, and why
---------------------
We chose the *classic* SunSpec information models (1, 1xx, 12x, 20x) because they are what the
installed base of residential hybrid inverters and meters actually speak (Fronius, SMA,
SolarEdge, Huawei, Kostal, Carlo Gavazzi / Fronius smart meters), what every SunSpec client
(pysunspec2, Home Assistant's integrations, evcc, OpenEMS) reads first, and - decisively - the
only family in pysunspec2's shipped definitions that has a *battery power setpoint with a revert
timeout* (model 124). Model 802 (battery base) has SoC/SoH/W but only ``SetOp`` /
``SetInvState`` (connect/start/stop), no power setpoint; 704 carries ``WSet`` but belongs to the
newer 7xx DER family that few residential devices implement yet.

================  ==========================  ==============================================
device kind       models                      why
================  ==========================  ==============================================
``inverter``      1, 103, 120, 121, 123       common; three-phase inverter measurements (W, WH,
                                              Hz, St); nameplate (WRtg); settings (WMax, the
                                              100 % of ``WMaxLimPct``); immediate controls
                                              (``WMaxLimPct`` + ``WMaxLim_Ena`` with
                                              ``WMaxLimPct_RvrtTms`` / ``_RmpTms``).
``battery``       1, 103, 120, 124            a battery inverter / hybrid storage unit: 103 for
                                              its AC power ``W`` and energy; 120 for capacity
                                              (``WHRtg``, ``AhrRtg``) and ``MaxChaRte`` /
                                              ``MaxDisChaRte``; 124 for ``ChaState`` (SoC),
                                              ``ChaSt``, ``WChaMax`` and the setpoint window
                                              ``StorCtl_Mod`` / ``InWRte`` / ``OutWRte`` with
                                              ``InOutWRte_RvrtTms``.
``meter``         1, 203                      three-phase wye meter at the grid connection:
                                              ``W`` (+ import), ``Hz``, ``TotWhImp/Exp``.
================  ==========================  ==============================================

The image starts with ``SunS`` at holding register 40000, models follow back to back, and an
end marker ``0xFFFF, 0`` closes it - exactly what ``SunSpecModbusClientDevice.scan()`` walks.

Signs (SunSpec's own conventions, mapped to :mod:`protocols.units`)
--------------------------------------------------------------------
* Inverter 103 ``W``: AC output, >= 0 -> our ``pv_w``.
* Battery 103 ``W``: AC output of the battery inverter: + = discharging, - = charging. This is
  already our battery convention (+ = discharge); no flip.
* Meter 203 ``W``: + = import from the grid, - = export. Our ``grid_w``; no flip.

Battery setpoint (model 124) - how the edge agent commands a power
------------------------------------------------------------------
124 describes a *window* of allowed battery power, in percent of ``WChaMax``:

* ``StorCtl_Mod`` bit 0 (value 1, CHARGE) enables the charge limit ``InWRte``;
  bit 1 (value 2, DISCHARGE) enables the discharge limit ``OutWRte``.
* With bit 0 set, charge power <= ``InWRte`` % (a *negative* ``InWRte`` forces discharge of at
  least that much). With bit 1 set, discharge power <= ``OutWRte`` % (a *negative* ``OutWRte``
  forces charge). In our sign (+ = discharge) the window is
  ``[-InWRte, +OutWRte] * WChaMax / 100``.
* Inside the window the device runs its own self-consumption (battery covers the house's net
  load), as a hybrid inverter does when left alone.
* A fixed setpoint ``P`` W (+ discharge) is the window ``[P, P]``: write
  ``InOutWRte_RvrtTms = T`` (once), then ``StorCtl_Mod = 3``, ``OutWRte = P/WChaMax*100``,
  ``InWRte = -P/WChaMax*100`` - in one write-multiple of registers 12..13 plus 5, or as
  pysunspec2 ``model.write()``. Every write of ``StorCtl_Mod``, ``InWRte`` or ``OutWRte``
  restarts the revert timer (the heartbeat). When ``T`` (seconds, device clock) passes without
  a refresh, the device reverts: ``StorCtl_Mod = 0``, ``InWRte = OutWRte = 100``.
  ``InOutWRte_RvrtTms = 0`` means never revert (SunSpec's meaning); the agent should not use it.
* The BMS still has the last word: at empty/full, or past ``WChaMax``, it limits by itself.

PV limit (model 123)
--------------------
``WMaxLimPct`` (percent of 121 ``WMax``) is applied while ``WMaxLim_Ena = 1``. Writing
``WMaxLimPct`` or ``WMaxLim_Ena`` restarts the revert timer ``WMaxLimPct_RvrtTms`` (seconds;
0 = never); on expiry the device sets ``WMaxLim_Ena = 0``. ``WMaxLimPct_RmpTms`` spreads the
change over that many seconds (0 = at once).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sunspec2 import mb as sunspec_mb
from sunspec2.device import Model

__all__ = [
    "BASE_ADDR",
    "DEVICE_MODELS",
    "END_MARKER",
    "SUNS_MARKER",
    "DeviceLayout",
    "PointDef",
    "build_image",
    "decode_raw",
    "encode_raw",
    "from_raw",
    "model_points",
    "to_raw",
]

#: Holding register (0-based protocol address) of the ``SunS`` marker.
BASE_ADDR = 40000
#: ``SunS`` as two registers.
SUNS_MARKER: tuple[int, int] = (0x5375, 0x6E53)
#: End-of-models marker: model id 0xFFFF with length 0.
END_MARKER: tuple[int, int] = (0xFFFF, 0)

#: SunSpec models per device kind, in image order. The heat pump is not SunSpec (no model
#: exists); see :mod:`protocols.registers.heat_pump`.
DEVICE_MODELS: dict[str, tuple[int, ...]] = {
    "inverter": (1, 103, 120, 121, 123),
    "battery": (1, 103, 120, 124),
    "meter": (1, 203),
}

_ONE_REG_TYPES = {"int16", "uint16", "count", "acc16", "enum16", "bitfield16", "sunssf", "pad"}
_TWO_REG_TYPES = {"int32", "uint32", "acc32", "enum32", "bitfield32"}
_SIGNED = {"int16", "sunssf", "int32"}


@dataclass(frozen=True, slots=True)
class PointDef:
    """One SunSpec point at a fixed place in a device's image.

    ``addr`` is the absolute holding register address; ``sf`` is the name of the scale factor
    point in the same model (or a fixed integer exponent, or None); ``access`` is "R" or "RW".
    """

    model_id: int
    name: str
    addr: int
    size: int
    type: str
    sf: str | int | None
    access: str
    mandatory: bool
    units: str
    symbols: dict[str, int] = field(default_factory=dict)

    @property
    def writable(self) -> bool:
        return self.access == "RW"


@cache
def model_points(model_id: int) -> tuple[int, dict[str, PointDef]]:
    """Length (without ID/L) and points of a model, offsets relative to the model's ID register.

    Read from pysunspec2's shipped JSON definition; only models without repeating groups are
    supported (all of :data:`DEVICE_MODELS` qualify).
    """
    model = Model(model_id)
    if model.groups:
        raise ValueError(f"model {model_id} has repeating groups; not supported by this builder")
    points: dict[str, PointDef] = {}
    for name, p in model.points.items():
        pdef = p.pdef
        sf = pdef.get("sf")
        if isinstance(sf, str):
            with contextlib.suppress(ValueError):
                sf = int(sf)
        points[name] = PointDef(
            model_id=model_id,
            name=name,
            addr=p.offset,
            size=int(p.len),
            type=pdef["type"],
            sf=sf,
            access=pdef.get("access", "R"),
            mandatory=pdef.get("mandatory", "O") == "M",
            units=pdef.get("units", ""),
            symbols={s["name"]: int(s["value"]) for s in pdef.get("symbols", [])},
        )
    return model.len - 2, points


class DeviceLayout:
    """Where every model and point of one device kind sits in its register image."""

    def __init__(self, model_ids: tuple[int, ...], base_addr: int = BASE_ADDR) -> None:
        self.model_ids = model_ids
        self.base_addr = base_addr
        #: model id -> address of its ID register
        self.model_addr: dict[int, int] = {}
        #: model id -> model length L (registers after ID and L)
        self.model_len: dict[int, int] = {}
        self.points: dict[tuple[int, str], PointDef] = {}
        addr = base_addr + 2
        for mid in model_ids:
            length, pts = model_points(mid)
            self.model_addr[mid] = addr
            self.model_len[mid] = length
            for name, p in pts.items():
                self.points[(mid, name)] = PointDef(
                    mid,
                    name,
                    addr + p.addr,
                    p.size,
                    p.type,
                    p.sf,
                    p.access,
                    p.mandatory,
                    p.units,
                    p.symbols,
                )
            addr += length + 2
        self.end_addr = addr  # address of the end marker
        #: registers from SunS to the end marker inclusive
        self.length = addr + 2 - base_addr

    @classmethod
    def for_kind(cls, kind: str) -> DeviceLayout:
        return _layout_for_kind(kind)

    def point(self, model_id: int, name: str) -> PointDef:
        try:
            return self.points[(model_id, name)]
        except KeyError:
            raise KeyError(f"model {model_id} has no point {name!r}") from None

    def sf_point(self, p: PointDef) -> PointDef | None:
        """The scale-factor point of ``p``, if it has a named one."""
        return self.points.get((p.model_id, p.sf)) if isinstance(p.sf, str) else None

    def point_at(self, addr: int) -> PointDef | None:
        """The point covering register ``addr`` (None for SunS / end marker / outside)."""
        return self._by_addr().get(addr)

    def _by_addr(self) -> dict[int, PointDef]:
        cached = getattr(self, "_addr_index", None)
        if cached is None:
            cached = {}
            for p in self.points.values():
                for i in range(p.size):
                    cached[p.addr + i] = p
            self._addr_index = cached
        return cached


@cache
def _layout_for_kind(kind: str) -> DeviceLayout:
    try:
        return DeviceLayout(DEVICE_MODELS[kind])
    except KeyError:
        raise KeyError(f"no SunSpec layout for device kind {kind!r}") from None


def build_image(layout: DeviceLayout, raw: dict[int, dict[str, Any]]) -> list[int]:
    """A full register image (SunS .. end marker) for ``layout`` with raw point values.

    ``raw[model_id][point]`` are *raw* register values (already divided by their scale
    factor); points not given read as SunSpec "not implemented". The encoding is pysunspec2's
    own (``Model.get_mb``), so the image is what a real device holding those values returns.
    """
    regs: list[int] = list(SUNS_MARKER)
    for mid in layout.model_ids:
        model = Model(mid)
        values = raw.get(mid, {})
        unknown = set(values) - set(model.points)
        if unknown:
            raise KeyError(f"model {mid} has no points {sorted(unknown)}")
        for name, point in model.points.items():
            if name == "ID":
                point.set_value(mid)
            elif name == "L":
                point.set_value(layout.model_len[mid])
            elif name in values:
                point.set_value(values[name])
        data = model.get_mb()
        regs.extend(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    regs.extend(END_MARKER)
    if len(regs) != layout.length:
        raise AssertionError(f"image length {len(regs)} != layout length {layout.length}")
    return regs


def to_raw(value: float, sf: int) -> int:
    """Physical value -> raw integer for scale factor exponent ``sf`` (value = raw * 10**sf)."""
    return round(value / 10.0**sf)


def from_raw(raw: int, sf: int) -> float:
    """Raw integer -> physical value for scale factor exponent ``sf``."""
    return raw * 10.0**sf


def unimplemented(ptype: str, size: int) -> list[int]:
    """Registers of the SunSpec "not implemented" value of a point type."""
    data = sunspec_mb.create_unimpl_value(ptype, len=size * 2)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def encode_raw(ptype: str, value: int | str | None, size: int = 1) -> list[int]:
    """Raw value -> registers, the fast path used on every simulator tick.

    Integers are saturated to the type's range (a real device clips rather than wraps), and
    never land on the type's "not implemented" sentinel by accident.
    """
    if value is None:
        return unimplemented(ptype, size)
    if ptype == "string":
        data = str(value).encode("utf-8")[: size * 2].ljust(size * 2, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, size * 2, 2)]
    v = int(value)
    if ptype in _ONE_REG_TYPES:
        if ptype in _SIGNED:
            v = min(32767, max(-32767, v))
            return [v & 0xFFFF]
        return [min(0xFFFE, max(0, v))]
    if ptype in _TWO_REG_TYPES:
        if ptype in _SIGNED:
            v = min(2**31 - 1, max(-(2**31) + 1, v)) & 0xFFFFFFFF
        elif ptype == "acc32":
            v = v % 2**32 or 1  # accumulators roll over; 0 is "not implemented"
        else:
            v = min(0xFFFFFFFE, max(0, v))
        return [v >> 16, v & 0xFFFF]
    raise ValueError(f"unsupported SunSpec point type {ptype!r}")


def decode_raw(ptype: str, regs: list[int]) -> int | str | None:
    """Registers -> raw value (None for the type's "not implemented" sentinel)."""
    if ptype == "string":
        data = b"".join(r.to_bytes(2, "big") for r in regs)
        text = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        return text or None
    if ptype in _ONE_REG_TYPES:
        v = regs[0]
        if ptype in _SIGNED:
            v = v - 0x10000 if v & 0x8000 else v
            return None if v == -32768 else v
        if ptype in {"acc16", "pad"}:
            return v
        return None if v == 0xFFFF else v
    if ptype in _TWO_REG_TYPES:
        v = (regs[0] << 16) | regs[1]
        if ptype in _SIGNED:
            v = v - 2**32 if v & 0x80000000 else v
            return None if v == -(2**31) else v
        if ptype == "acc32":
            return None if v == 0 else v
        return None if v == 0xFFFFFFFF else v
    raise ValueError(f"unsupported SunSpec point type {ptype!r}")


def scaled(value: float | None, sf: int) -> int | None:
    """Physical -> raw, passing None (not implemented) and non-finite values through as None."""
    if value is None or not math.isfinite(value):
        return None
    return to_raw(value, sf)
