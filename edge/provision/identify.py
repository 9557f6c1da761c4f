"""What answers at one unit id: kind, maker, model, serial, version.

SunSpec first (the ``SunS`` marker at 40000, 0 or 50000, then the model chain, walked by the
drivers' own :func:`~edge.drivers.sunspec.walk_models`), the kind from the model list
(:func:`~edge.drivers.kind_from_models`) and the identity from common model 1. Else the vpp
heat pump map: ``map_version`` at 0 and the identity text at 200 (absent on older units).

The pure parts (:func:`classify`, :func:`identity_from_common`) are table-tested; :func:`probe`
takes any async ``read(address, count)`` (a :class:`~edge.drivers.ModbusLink` read), so the
scan, commissioning and the agent's start-up (:func:`detect_kind`, a device configured
without its kind) share it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.drivers import (
    DRIVERS,
    BadValues,
    DetectError,
    DeviceException,
    LinkError,
    ModbusLink,
    kind_from_models,
)
from edge.drivers.link import MAX_READ_REGISTERS
from edge.drivers.sunspec import walk_models
from protocols.messages import DeviceKind
from protocols.registers import heat_pump as hpmap
from protocols.registers.sunspec import decode_raw, model_points

__all__ = [
    "HP_PROTOCOL",
    "SUNSPEC",
    "Identified",
    "NoDevice",
    "classify",
    "detect_kind",
    "identity_from_common",
    "probe",
]

Read = Callable[[int, int], Awaitable[list[int]]]

SUNSPEC = "sunspec"
HP_PROTOCOL = f"vpp-heat-pump-{hpmap.HP_MAP_VERSION}"
#: exception codes of a gateway that has nothing at that unit id
_NO_TARGET = frozenset({10, 11})


class NoDevice(Exception):  # noqa: N818 - an answer, not a bug
    """Nothing we know answers at that unit id; the message says what was seen."""


@dataclass(frozen=True, slots=True)
class Identified:
    """One device found: where, what kind, who made it, and whether the agent can drive it."""

    host: str
    port: int
    unit_id: int
    kind: str  # a DeviceKind value, or "unknown" (SunSpec models we do not drive)
    protocol: str  # "sunspec" | "vpp-heat-pump-1"
    maker: str | None = None
    model: str | None = None
    serial: str | None = None
    version: str | None = None
    models: tuple[int, ...] = ()
    supported: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = list(self.models)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Identified:
        return cls(
            host=str(d["host"]),
            port=int(d["port"]),
            unit_id=int(d["unit_id"]),
            kind=str(d["kind"]),
            protocol=str(d["protocol"]),
            maker=d.get("maker"),
            model=d.get("model"),
            serial=d.get("serial"),
            version=d.get("version"),
            models=tuple(int(m) for m in d.get("models", ())),
            supported=bool(d.get("supported", True)),
            note=str(d.get("note", "")),
        )


def classify(models: list[int]) -> tuple[str, bool, str]:
    """(kind, supported, note) of a SunSpec model list: the kind our drivers see in it, and
    whether the driver of that kind finds every model it reads."""
    kind = kind_from_models(models)
    if kind is None:
        return "unknown", False, f"SunSpec models {sorted(set(models))} name no kind vpp drives"
    needed = getattr(DRIVERS[kind], "MODELS", ())
    missing = [m for m in needed if m not in models]
    if missing:
        return kind.value, False, f"the {kind.value} driver needs models {missing}, not present"
    return kind.value, True, ""


def identity_from_common(regs: list[int]) -> dict[str, str | None]:
    """Maker, model, serial, version from the registers of model 1 (ID and L included)."""
    _length, points = model_points(1)
    out: dict[str, str | None] = {}
    for key, name in (("maker", "Mn"), ("model", "Md"), ("serial", "SN"), ("version", "Vr")):
        p = points[name]
        chunk = regs[p.addr : p.addr + p.size]
        raw = decode_raw(p.type, chunk) if len(chunk) == p.size else None
        out[key] = (str(raw).strip() or None) if raw is not None else None
    return out


async def _sunspec(read: Read) -> dict[int, tuple[int, int]] | None:
    """The SunSpec model chain, or None if there is none; NoDevice when a gateway says no
    device answers at this unit id (Modbus exception 10 or 11)."""

    async def read_or_no_device(address: int, count: int) -> list[int]:
        try:
            return await read(address, count)
        except DeviceException as exc:
            if exc.code in _NO_TARGET:
                raise NoDevice(f"no device at this unit id (Modbus exception {exc.code})") from None
            raise

    try:
        return await walk_models(read_or_no_device)
    except BadValues:
        return None


async def probe(read: Read, host: str, port: int, unit_id: int) -> Identified:
    """Identify the device behind ``read``. Raises :class:`NoDevice`, or the link's
    LinkTimeout / LinkDown (the caller decides what a silent endpoint means)."""
    models = await _sunspec(read)
    if models is not None:
        ids = list(models)
        kind, supported, note = classify(ids)
        ident: dict[str, str | None] = {}
        if 1 in models:
            addr, length = models[1]
            ident = identity_from_common(await read(addr, min(length + 2, MAX_READ_REGISTERS)))
        return Identified(
            host,
            port,
            unit_id,
            kind,
            SUNSPEC,
            models=tuple(ids),
            supported=supported,
            note=note,
            extra={"models_at": models},
            **ident,
        )
    mv = hpmap.point("map_version")
    try:
        version = hpmap.decode(mv, await read(mv.address, mv.size))
    except DeviceException as exc:
        raise NoDevice(
            f"no SunSpec 'SunS' marker and no heat pump map (Modbus exception {exc.code})"
        ) from None
    if version != hpmap.HP_MAP_VERSION:
        raise NoDevice(
            f"no SunSpec 'SunS' marker; register 0 reads {version:g}, not heat pump map "
            f"version {hpmap.HP_MAP_VERSION}"
        )
    return Identified(
        host, port, unit_id, DeviceKind.HEAT_PUMP.value, HP_PROTOCOL, **await _hp_identity(read)
    )


async def detect_kind(link: ModbusLink, unit_id: int) -> DeviceKind:
    """The kind of device at ``unit_id`` behind ``link`` (the agent's own connection to that
    endpoint), identified as the installer's scan does. Raises :class:`DetectError` naming
    what was seen: nothing we know, a silent or dropped link, SunSpec models of no kind."""
    where = f"{link.host}:{link.port} unit {unit_id}"

    async def read(address: int, count: int) -> list[int]:
        return await link.read(address, count, unit_id)

    try:
        device = await probe(read, link.host, link.port, unit_id)
    except (NoDevice, LinkError) as exc:
        raise DetectError(f"{where}: not a device we know ({exc})") from None
    if device.kind == "unknown":
        raise DetectError(f"{where}: {device.note}")
    return DeviceKind(device.kind)


async def _hp_identity(read: Read) -> dict[str, str | None]:
    pts = hpmap.IDENTITY_POINTS
    lo = min(p.address for p in pts)
    try:
        regs = await read(lo, max(p.address + p.size for p in pts) - lo)
    except DeviceException:  # a unit from before the identity block: kind known, maker not
        return {}
    text = {
        p.name: hpmap.decode_text(p, regs[p.address - lo : p.address - lo + p.size]) for p in pts
    }
    return {
        "maker": text["manufacturer"],
        "model": text["model"],
        "serial": text["serial_number"],
        "version": text["firmware_version"],
    }
