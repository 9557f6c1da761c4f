"""SunSpec devices: an image built from pysunspec2's model definitions, point-level access."""

from __future__ import annotations

from typing import Any, ClassVar

from pymodbus.constants import ExcCodes

from firmware_sim.devices.base import Device
from protocols.registers.sunspec import (
    BASE_ADDR,
    DeviceLayout,
    PointDef,
    build_image,
    decode_raw,
    encode_raw,
)

Key = tuple[int, str]


class SunSpecDevice(Device):
    """A device whose image is SunS + SunSpec models + end marker at 40000.

    Subclasses set :attr:`KIND`, :attr:`WRITABLE` (points a client may write, with the raw
    range a real device accepts) and implement :meth:`static_values`, :meth:`measure` and
    :meth:`on_write`. Every other point is read-only here, also those the model marks RW
    (settings that live in flash, such as 121 ``WMax``, are the installer's, not the VPP's).
    """

    KIND: ClassVar[str] = ""
    #: (model, point) -> (lowest raw, highest raw) accepted on write
    WRITABLE: ClassVar[dict[Key, tuple[int, int]]] = {}

    layout: DeviceLayout
    #: this unit's writable points and raw ranges (WRITABLE, adjusted to its rating)
    ranges: dict[Key, tuple[int, int]]

    @classmethod
    def create(cls, site_id: str, index: int, unit_id: int, phys: Any, clock: Any):
        dev = cls(
            kind=cls.KIND, site_id=site_id, index=index, unit_id=unit_id, phys=phys, clock=clock
        )
        dev.layout = DeviceLayout.for_kind(cls.KIND)
        dev.start_addr = BASE_ADDR
        dev.ranges = dict(cls.WRITABLE)
        dev.init_state()
        raw = dev.static_values()
        dev.good = build_image(dev.layout, raw)
        dev.writable = [False] * len(dev.good)
        for key in dev.ranges:
            p = dev.layout.point(*key)
            for i in range(p.size):
                dev.writable[p.addr - BASE_ADDR + i] = True
        dev.structural = {0, 1, len(dev.good) - 2, len(dev.good) - 1}
        for mid, addr in dev.layout.model_addr.items():
            dev.structural |= {addr - BASE_ADDR, addr - BASE_ADDR + 1}
            # keep the common model readable even in garbage: it names the device
            if mid == 1:
                dev.structural |= set(range(addr - BASE_ADDR, addr - BASE_ADDR + 68))
        dev.refresh(clock.time())
        return dev

    # --- subclass hooks -----------------------------------------------------------------------

    def init_state(self) -> None:
        """Set up control state before the image is built."""

    def static_values(self) -> dict[int, dict[str, Any]]:
        raise NotImplementedError

    def measure(self, now: float) -> dict[Key, Any]:
        """Raw values of the measurement points now."""
        raise NotImplementedError

    def on_write(self, keys: list[Key], now: float) -> None:
        """React to accepted writes of control points ``keys`` (already in ``good``)."""

    # --- point access -------------------------------------------------------------------------

    def point(self, mid: int, name: str) -> PointDef:
        return self.layout.point(mid, name)

    def get(self, mid: int, name: str) -> Any:
        p = self.layout.point(mid, name)
        off = p.addr - BASE_ADDR
        return decode_raw(p.type, self.good[off : off + p.size])

    def put(self, mid: int, name: str, raw: Any) -> None:
        p = self.layout.point(mid, name)
        off = p.addr - BASE_ADDR
        self.good[off : off + p.size] = encode_raw(p.type, raw, p.size)

    def common(self, model: str, serial: str) -> dict[str, Any]:
        return {"Mn": "vpp-sim", "Md": model, "Vr": "1.0.0", "SN": serial, "DA": self.unit_id}

    # --- writes -------------------------------------------------------------------------------

    def check_and_apply(self, address: int, values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        keys: list[Key] = []
        decoded: list[tuple[Key, Any]] = []
        a = address
        while a < end:
            p = self.layout.point_at(a)
            key = (p.model_id, p.name) if p else None
            if p is None or key not in self.ranges:
                return ExcCodes.ILLEGAL_ADDRESS
            if p.addr != a or p.addr + p.size > end:
                return ExcCodes.ILLEGAL_ADDRESS  # a write must cover whole points
            off = a - address
            raw = decode_raw(p.type, values[off : off + p.size])
            lo, hi = self.ranges[key]
            if raw is None or not (lo <= raw <= hi):  # type: ignore[operator]
                return ExcCodes.ILLEGAL_VALUE
            keys.append(key)
            decoded.append((key, raw))
            a += p.size
        self.write_good(address, values)
        self.on_write(keys, self.clock.time())
        return None

    def refresh(self, now: float) -> None:
        for (mid, name), raw in self.measure(now).items():
            self.put(mid, name, raw)
        self.publish()
