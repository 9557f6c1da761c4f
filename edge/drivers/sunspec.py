"""SunSpec drivers: PV inverter (1+103+120+121+123), battery (1+103+120+124), meter (1+203).

The register maps are data: point offsets, types and scale factors come from pysunspec2's
model definitions (:func:`protocols.registers.sunspec.model_points`); model *addresses* come
from walking the device's own model chain once (``SunS``, then ID/L headers to the end
marker), so a real device with extra or reordered models works the same as the simulator.

Each poll reads the driver's models whole, packing adjacent models into requests of at most
125 registers (inverter: 2 requests, battery: 1, meter: 1); model 1 (identity) is read once.
Scale factors are taken from the same read as the values they scale.

Volatile control points written (nothing else, ever):

* inverter, model 123: ``WMaxLimPct``, ``WMaxLimPct_RvrtTms``, ``WMaxLim_Ena``.
* battery, model 124: ``StorCtl_Mod``, ``OutWRte``, ``InWRte``, ``InOutWRte_RvrtTms``.
  (``WChaMax`` is a setting, often in flash: never written.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from edge.drivers.base import _UNKNOWN, BadValues, Driver, VerifyError
from edge.drivers.link import MAX_READ_REGISTERS
from edge.drivers.write_policy import WriteResult
from protocols.messages import DeviceKind
from protocols.registers.sunspec import BASE_ADDR, END_MARKER, SUNS_MARKER, decode_raw, model_points

__all__ = ["BatteryDriver", "InverterDriver", "MeterDriver", "SunSpecDriver", "walk_models"]

#: Where a SunSpec map may start (pysunspec2's order).
BASE_ADDRS = (BASE_ADDR, 0, 50000)
_MAX_MODELS = 64  # a chain longer than this is garbage, not a device


async def walk_models(read, max_models: int = _MAX_MODELS) -> dict[int, tuple[int, int]]:
    """Model id -> (address of its ID register, length L), by walking the chain.

    ``read(address, count)`` is an async register reader. Raises BadValues when there is no
    ``SunS`` marker at any base address or the chain is broken.
    """
    from edge.drivers.link import DeviceException

    base = None
    for addr in BASE_ADDRS:
        try:
            regs = await read(addr, 2)
        except DeviceException:
            continue
        if tuple(regs) == SUNS_MARKER:
            base = addr
            break
    if base is None:
        raise BadValues(f"no SunSpec 'SunS' marker at {', '.join(map(str, BASE_ADDRS))}")
    models: dict[int, tuple[int, int]] = {}
    addr = base + 2
    for _ in range(max_models):
        mid, length = await read(addr, 2)
        if (mid, length) == END_MARKER or mid == END_MARKER[0]:
            return models
        models.setdefault(mid, (addr, length))  # first instance of a repeated model
        addr += 2 + length
    raise BadValues(f"SunSpec model chain at {base} has no end marker after {max_models} models")


def _blocks(models: dict[int, tuple[int, int]], wanted: tuple[int, ...]) -> list[tuple[int, int]]:
    """(address, count) requests covering the wanted models whole, adjacent ones packed."""
    spans = sorted((models[m][0], models[m][1] + 2) for m in wanted)
    out: list[list[int]] = []
    for addr, count in spans:
        if count > MAX_READ_REGISTERS:
            raise BadValues(f"model at {addr} is {count} registers: longer than one read")
        if out and out[-1][0] + out[-1][1] == addr and out[-1][1] + count <= MAX_READ_REGISTERS:
            out[-1][1] += count
        else:
            out.append([addr, count])
    return [(a, c) for a, c in out]


class SunSpecDriver(Driver):
    """Reads whole models; subclasses turn points into values and write their controls."""

    #: models read every poll (model 1 is read once, at setup)
    MODELS: ClassVar[tuple[int, ...]] = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.models: dict[int, tuple[int, int]] | None = None
        self.identity: dict[str, str | None] = {}
        self._blocks: list[tuple[int, int]] = []
        #: (model, point) -> raw value from the last good read
        self.raw: dict[tuple[int, str], int | str | None] = {}

    async def _setup(self) -> None:
        models = await walk_models(self._r)
        missing = [m for m in self.MODELS if m not in models]
        if missing:
            raise BadValues(f"not a {self.kind}: SunSpec models {sorted(models)} lack {missing}")
        if 1 in models:
            addr, length = models[1]
            regs = await self._r(addr, min(length + 2, MAX_READ_REGISTERS))
            raw = self._decode(1, regs)
            self.identity = {k: raw.get((1, k)) for k in ("Mn", "Md", "SN", "Vr")}  # type: ignore[misc]
        self._blocks = _blocks(models, self.MODELS)
        self.models = models

    def _decode(self, mid: int, regs: list[int], offset: int = 0) -> dict:
        _length, points = model_points(mid)
        out = {}
        for name, p in points.items():
            lo = offset + p.addr
            if lo + p.size <= len(regs):
                out[(mid, name)] = decode_raw(p.type, regs[lo : lo + p.size])
        return out

    async def _read_raw(self) -> dict[tuple[int, str], int | str | None]:
        if self.models is None:
            await self._setup()
        assert self.models is not None
        raw: dict[tuple[int, str], int | str | None] = {}
        for addr, count in self._blocks:
            regs = await self._r(addr, count)
            for mid in self.MODELS:
                maddr, _len = self.models[mid]
                if addr <= maddr < addr + count:
                    if regs[maddr - addr] != mid:
                        raise BadValues(f"model {mid} header reads {regs[maddr - addr]}")
                    raw.update(self._decode(mid, regs, maddr - addr))
        return raw

    async def _read(self) -> dict[str, float | None]:
        raw = await self._read_raw()
        values = self._values(raw)
        self.raw = raw
        return values

    async def _prepare(self) -> None:
        if not self.raw:
            await self._read()

    # --- point helpers ------------------------------------------------------------------------

    def _addr(self, mid: int, name: str) -> int:
        assert self.models is not None
        return self.models[mid][0] + model_points(mid)[1][name].addr

    @staticmethod
    def _sf(raw: Mapping, mid: int, name: str) -> int:
        sf_name = model_points(mid)[1][name].sf
        if sf_name is None:
            return 0
        if isinstance(sf_name, int):
            return sf_name
        sf = raw.get((mid, sf_name))
        if sf is None or not -10 <= int(sf) <= 10:
            raise BadValues(f"scale factor {mid}.{sf_name} = {sf!r}")
        return int(sf)

    def _val(
        self,
        raw: Mapping,
        mid: int,
        name: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        required: bool = True,
    ) -> float | None:
        """Physical value of a point, checked against [lo, hi]; None if not implemented."""
        v = raw.get((mid, name))
        if v is None:
            if required:
                raise BadValues(f"{mid}.{name} not implemented (or a sentinel)")
            return None
        sf = self._sf(raw, mid, name)
        value = round(float(v) * 10.0**sf, max(0, -sf))  # type: ignore[arg-type]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise BadValues(f"{mid}.{name} = {value:g} outside [{lo}, {hi}]")
        return value

    @staticmethod
    def _enum(raw: Mapping, mid: int, name: str, allowed: range, *, required: bool = True):
        v = raw.get((mid, name))
        if v is None and not required:
            return None
        if v is None or int(v) not in allowed:  # type: ignore[arg-type]
            raise BadValues(f"{mid}.{name} = {v!r} not in {allowed.start}..{allowed.stop - 1}")
        return int(v)  # type: ignore[arg-type]

    def _values(self, raw: Mapping) -> dict[str, float | None]:
        raise NotImplementedError

    async def _verify(self, address: int, expected: dict[int, int]) -> list[int]:
        """Read back from ``address`` and compare the registers in ``expected`` (addr -> raw)."""
        top = max(expected)
        regs = await self._r(address, top - address + 1)
        bad = {a: (v, regs[a - address]) for a, v in expected.items() if regs[a - address] != v}
        if bad:
            raise VerifyError(
                ", ".join(f"@{a}: wrote {w}, reads {r}" for a, (w, r) in sorted(bad.items()))
            )
        return regs


def _u16(v: int) -> int:
    return v & 0xFFFF


class InverterDriver(SunSpecDriver):
    """PV inverter. ``set_limit(W)`` caps its output through model 123."""

    kind = DeviceKind.PV_INVERTER
    MODELS = (103, 120, 121, 123)
    WRITES = ("123.WMaxLimPct", "123.WMaxLimPct_RvrtTms", "123.WMaxLim_Ena")

    def _values(self, raw: Mapping) -> dict[str, float | None]:
        rating = self._val(raw, 120, "WRtg", 1, 1e7)
        assert rating is not None
        wmax = self._val(raw, 121, "WMax", 1, 2 * rating, required=False) or rating
        power = self._val(raw, 103, "W", -0.02 * rating - 50, 1.5 * rating + 100)
        assert power is not None
        ena = self._enum(raw, 123, "WMaxLim_Ena", range(0, 2))
        pct = self._val(raw, 123, "WMaxLimPct", 0, 100)
        assert pct is not None
        return {
            "power_w": max(0.0, power),  # a few W of night consumption read as 0
            "w_max_w": wmax,
            "limit_w": round(pct / 100.0 * wmax, 3) if ena else None,
            "energy_wh": self._val(raw, 103, "WH", 0, None, required=False),
            "rated_w": rating,
            "frequency_hz": self._val(raw, 103, "Hz", 40, 70, required=False),
            "state": self._enum(raw, 103, "St", range(1, 9), required=False),
        }

    async def set_limit(self, limit_w: float | None) -> WriteResult:
        """Cap PV output at ``limit_w`` W (clamped to [0, WMax]); None releases the limit."""
        return await self._command(limit_w)

    def _pct_sf(self) -> int:
        return self._sf(self.raw, 123, "WMaxLimPct")

    def _wmax(self) -> float:
        wmax = self._val(self.raw, 121, "WMax", 1, None, required=False)
        return wmax or self._val(self.raw, 120, "WRtg", 1, None)  # type: ignore[return-value]

    def _quantum(self) -> float:
        return self._wmax() / 100.0 * 10.0 ** self._pct_sf() if self.raw else 0.0

    def _effective(self, target: float | None) -> float | None:
        if target is None:
            return None
        if not math.isfinite(target):
            raise ValueError(f"limit must be finite, got {target!r}")
        wmax = self._wmax()
        return round(self._pct_raw(target) * 10.0 ** self._pct_sf() / 100.0 * wmax, 3)

    def _pct_raw(self, limit_w: float) -> int:
        wmax, sf = self._wmax(), self._pct_sf()
        pct = min(100.0, max(0.0, limit_w / wmax * 100.0))
        return min(round(100.0 / 10.0**sf), max(0, round(pct / 10.0**sf)))

    def _held(self, values: Mapping[str, float | None]) -> object:
        return values.get("limit_w")

    async def _write(self, target: float | None, *, refresh: bool) -> None:
        a_pct, a_rvrt = self._addr(123, "WMaxLimPct"), self._addr(123, "WMaxLimPct_RvrtTms")
        a_ena = self._addr(123, "WMaxLim_Ena")
        if target is None:
            await self._w(a_ena, [0])
            await self._verify(a_pct, {a_ena: 0})
            self.raw[(123, "WMaxLim_Ena")] = 0
            return
        pct = self._pct_raw(target)
        t = min(28800, round(self.revert_timeout_s))
        full = not refresh or self.raw.get((123, "WMaxLim_Ena")) != 1
        full = full or self.raw.get((123, "WMaxLimPct_RvrtTms")) != t
        if full and self.raw.get((123, "WMaxLimPct_RvrtTms")) != t:
            await self._w(a_rvrt, [t])
        await self._w(a_pct, [pct])  # the heartbeat: restarts the revert timer
        if full:
            await self._w(a_ena, [1])
        await self._verify(a_pct, {a_pct: pct, a_rvrt: t, a_ena: 1})
        self.raw.update(
            {(123, "WMaxLimPct"): pct, (123, "WMaxLimPct_RvrtTms"): t, (123, "WMaxLim_Ena"): 1}
        )


class BatteryDriver(SunSpecDriver):
    """Battery storage unit. ``set_power(W)`` holds a fixed power through model 124."""

    kind = DeviceKind.BATTERY
    MODELS = (103, 120, 124)
    WRITES = ("124.StorCtl_Mod", "124.OutWRte", "124.InWRte", "124.InOutWRte_RvrtTms")

    def _values(self, raw: Mapping) -> dict[str, float | None]:
        rating = self._val(raw, 120, "WRtg", 1, 1e7)
        assert rating is not None
        wchamax = self._val(raw, 124, "WChaMax", 0, 2 * rating)
        assert wchamax is not None
        power = self._val(raw, 103, "W", -1.5 * rating - 100, 1.5 * rating + 100)
        soc = self._val(raw, 124, "ChaState", 0, 100.5)
        assert soc is not None
        cap = self._val(raw, 120, "WHRtg", 1, 1e8)
        max_cha = self._val(raw, 120, "MaxChaRte", 0, 2 * rating, required=False)
        max_dis = self._val(raw, 120, "MaxDisChaRte", 0, 2 * rating, required=False)
        mod = self._enum(raw, 124, "StorCtl_Mod", range(0, 4))
        out_pct = self._val(raw, 124, "OutWRte", -100, 100)
        in_pct = self._val(raw, 124, "InWRte", -100, 100)
        assert out_pct is not None
        assert in_pct is not None
        lo = round(-in_pct / 100.0 * wchamax, 3) if mod & 1 else -wchamax
        hi = round(out_pct / 100.0 * wchamax, 3) if mod & 2 else wchamax
        if mod == 0:
            setpoint: float | None = None
        elif mod == 3 and abs(hi - lo) <= max(1.0, 1e-3 * wchamax):
            setpoint = hi
        else:
            setpoint = math.nan  # a window, not a point: someone else's command
        return {
            "power_w": power,
            "soc_pct": min(100.0, soc),
            "capacity_wh": cap,
            "max_charge_w": min(wchamax, max_cha) if max_cha is not None else wchamax,
            "max_discharge_w": min(wchamax, max_dis) if max_dis is not None else wchamax,
            "setpoint_w": None if setpoint is None or math.isnan(setpoint) else setpoint,
            "window_lo_w": lo,
            "window_hi_w": hi,
            "control_mode": float(mod),
            "charge_status": self._enum(raw, 124, "ChaSt", range(1, 8), required=False),
            "rated_w": rating,
        }

    async def set_power(self, power_w: float | None) -> WriteResult:
        """Hold ``power_w`` W (+ discharge), clamped to +-WChaMax; None releases to the device."""
        return await self._command(power_w)

    def _rte_sf(self) -> int:
        return self._sf(self.raw, 124, "OutWRte")

    def _wchamax(self) -> float:
        v = self._val(self.raw, 124, "WChaMax", 0, None)
        if not v:
            raise ValueError("battery reports WChaMax = 0: no setpoint can be expressed")
        return v

    def _quantum(self) -> float:
        return self._wchamax() / 100.0 * 10.0 ** self._rte_sf() if self.raw else 0.0

    def _rte_raw(self, power_w: float) -> int:
        sf = self._rte_sf()
        pct = min(100.0, max(-100.0, power_w / self._wchamax() * 100.0))
        lim = round(100.0 / 10.0**sf)
        return min(lim, max(-lim, round(pct / 10.0**sf)))

    def _effective(self, target: float | None) -> float | None:
        if target is None:
            return None
        if not math.isfinite(target):
            raise ValueError(f"power must be finite, got {target!r}")
        return round(self._rte_raw(target) * 10.0 ** self._rte_sf() / 100.0 * self._wchamax(), 3)

    def _held(self, values: Mapping[str, float | None]) -> object:
        mod = values.get("control_mode")
        if mod is None:
            return _UNKNOWN
        if mod == 0:
            return None
        sp = values.get("setpoint_w")
        return math.nan if sp is None else sp  # NaN: a window that is not our point

    async def _write(self, target: float | None, *, refresh: bool) -> None:
        a_mod, a_out = self._addr(124, "StorCtl_Mod"), self._addr(124, "OutWRte")
        a_in, a_rvrt = self._addr(124, "InWRte"), self._addr(124, "InOutWRte_RvrtTms")
        if a_in != a_out + 1:
            raise BadValues("124 OutWRte/InWRte are not adjacent")
        if target is None:
            await self._w(a_mod, [0])
            await self._verify(a_mod, {a_mod: 0})
            self.raw[(124, "StorCtl_Mod")] = 0
            return
        rte = self._rte_raw(target)
        t = min(28800, round(self.revert_timeout_s))
        mod_ok = self.raw.get((124, "StorCtl_Mod")) == 3
        rvrt_ok = self.raw.get((124, "InOutWRte_RvrtTms")) == t
        if not rvrt_ok:
            await self._w(a_rvrt, [t])
        # the window first, then the mode: the device never applies half a command
        await self._w(a_out, [_u16(rte), _u16(-rte)])  # the heartbeat: restarts the timer
        if not (refresh and mod_ok):
            await self._w(a_mod, [3])
        lo = min(a_mod, a_out, a_rvrt)
        await self._verify(lo, {a_mod: 3, a_out: _u16(rte), a_in: _u16(-rte), a_rvrt: t})
        self.raw.update(
            {
                (124, "StorCtl_Mod"): 3,
                (124, "OutWRte"): rte,
                (124, "InWRte"): -rte,
                (124, "InOutWRte_RvrtTms"): t,
            }
        )


class MeterDriver(SunSpecDriver):
    """Grid meter (model 203, + import). Read only: it writes nothing."""

    kind = DeviceKind.METER
    MODELS = (203,)

    def _values(self, raw: Mapping) -> dict[str, float | None]:
        return {
            "power_w": self._val(raw, 203, "W", -1e6, 1e6),
            "frequency_hz": self._val(raw, 203, "Hz", 45, 65),
            "energy_import_wh": self._val(raw, 203, "TotWhImp", 0, None, required=False),
            "energy_export_wh": self._val(raw, 203, "TotWhExp", 0, None, required=False),
        }
