"""The driver of each device kind, and the kind a SunSpec model list names.

What answers at a unit id is found by :func:`edge.provision.identify.detect_kind` (the
installer's scan and the agent at start-up share one identification, over the agent's own
link)."""

from __future__ import annotations

from edge.drivers.base import Driver
from edge.drivers.heat_pump import HeatPumpDriver
from edge.drivers.link import ModbusLink
from edge.drivers.sunspec import BatteryDriver, InverterDriver, MeterDriver
from protocols.clock import Clock
from protocols.messages import DeviceKind

__all__ = ["DRIVERS", "DetectError", "kind_from_models", "make_driver"]

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
