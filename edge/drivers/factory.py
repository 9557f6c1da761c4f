"""Detecting what answers at a unit id, and building its driver.

Detection runs once per device at start-up (or provisioning), so it may use pysunspec2's
blocking ``scan()`` - in a thread, so the agent's event loop (hundreds of sites) never blocks.
The scan opens its own short connection; call it before the agent opens its link to that
endpoint (some devices accept a single client). Polling never uses pysunspec2.
"""

from __future__ import annotations

import asyncio
import logging

from pymodbus.client import AsyncModbusTcpClient

from edge.drivers.base import Driver
from edge.drivers.heat_pump import HeatPumpDriver
from edge.drivers.link import ModbusLink
from edge.drivers.sunspec import BatteryDriver, InverterDriver, MeterDriver
from protocols.clock import Clock
from protocols.messages import DeviceKind
from protocols.registers import heat_pump as hpmap

__all__ = ["DRIVERS", "DetectError", "detect_kind", "kind_from_models", "make_driver"]

log = logging.getLogger("edge.drivers.detect")

DRIVERS: dict[DeviceKind, type[Driver]] = {
    DeviceKind.PV_INVERTER: InverterDriver,
    DeviceKind.BATTERY: BatteryDriver,
    DeviceKind.METER: MeterDriver,
    DeviceKind.HEAT_PUMP: HeatPumpDriver,
}

_STORAGE = {124, 802}
_METERS = {201, 202, 203, 204}
_INVERTERS = {101, 102, 103, 111, 112, 113, 701}


class DetectError(Exception):
    """Nothing we can drive answers at host:port / unit id; the message says what was seen."""


def kind_from_models(models: list[int]) -> DeviceKind | None:
    """The device kind a set of SunSpec models describes (storage before inverter)."""
    ids = set(models)
    if ids & _STORAGE:
        return DeviceKind.BATTERY
    if ids & _METERS:
        return DeviceKind.METER
    if ids & _INVERTERS:
        return DeviceKind.PV_INVERTER
    return None


def _scan_sunspec(host: str, port: int, unit_id: int, timeout_s: float) -> list[int]:
    """Blocking: pysunspec2 scan; the model ids found (raises on no SunSpec map)."""
    from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

    dev = SunSpecModbusClientDeviceTCP(
        slave_id=unit_id, ipaddr=host, ipport=port, timeout=timeout_s
    )
    try:
        dev.scan()
        return [m.model_id for m in dev.model_list]
    finally:
        dev.disconnect()


async def _probe_heat_pump(host: str, port: int, unit_id: int, timeout_s: float) -> str | None:
    """None if the heat pump map answers with our map version, else what was seen."""
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    try:
        if not await client.connect():
            return "connect failed"
        p = hpmap.point("map_version")
        rr = await client.read_holding_registers(p.address, count=1, device_id=unit_id)
        if rr.isError():
            return f"heat pump map: Modbus exception {getattr(rr, 'exception_code', '?')}"
        version = hpmap.decode(p, rr.registers[: p.size])
        if version != hpmap.HP_MAP_VERSION:
            return f"heat pump map: map_version {version:g}, expected {hpmap.HP_MAP_VERSION}"
        return None
    except Exception as exc:  # timeouts, drops: say so in the DetectError
        return f"heat pump map: {type(exc).__name__}: {exc}"
    finally:
        client.close()


async def detect_kind(host: str, port: int, unit_id: int, timeout_s: float = 3.0) -> DeviceKind:
    """Which kind of device answers at ``host:port`` unit ``unit_id``.

    SunSpec models first (pysunspec2 scan in a thread), else the heat pump map's identity
    register. Raises :class:`DetectError` naming what each attempt saw.
    """
    where = f"{host}:{port} unit {unit_id}"
    try:
        models = await asyncio.to_thread(_scan_sunspec, host, port, unit_id, timeout_s)
    except Exception as exc:
        sunspec_seen = f"SunSpec scan: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
    else:
        kind = kind_from_models(models)
        if kind is not None:
            log.info("%s: SunSpec models %s -> %s", where, models, kind)
            return kind
        raise DetectError(f"{where}: SunSpec models {models} name no kind we drive")
    seen = await _probe_heat_pump(host, port, unit_id, timeout_s)
    if seen is None:
        log.info("%s: vpp heat pump map v%d -> heat_pump", where, hpmap.HP_MAP_VERSION)
        return DeviceKind.HEAT_PUMP
    raise DetectError(f"{where}: not a device we know ({sunspec_seen}; {seen})")


def make_driver(
    kind: DeviceKind,
    device_id: str,
    link: ModbusLink,
    unit_id: int,
    clock: Clock,
    *,
    revert_timeout_s: float = 60.0,
    deadband_w: float = 50.0,
    min_write_interval_s: float = 1.0,
    lost_after: int = 3,
    log_context: str | None = None,
) -> Driver:
    """The driver for ``kind`` on ``link`` / ``unit_id``. Cheap: it reads nothing yet."""
    try:
        cls = DRIVERS[DeviceKind(kind)]
    except (KeyError, ValueError):
        raise ValueError(f"no driver for device kind {kind!r}") from None
    return cls(
        device_id,
        link,
        unit_id,
        clock,
        revert_timeout_s=revert_timeout_s,
        deadband_w=deadband_w,
        min_write_interval_s=min_write_interval_s,
        lost_after=lost_after,
        log_context=log_context,
    )
