"""Device drivers of the edge agent: SunSpec PV inverter, battery and meter, and heat pump.

* :class:`ModbusLink` - the agent's one connection per Modbus TCP endpoint (timeouts,
  retries with backoff, reconnect, one request at a time), shared by the unit ids behind it.
* :func:`kind_from_models` - the device kind a SunSpec model list names (what answers at a
  unit id: :func:`edge.provision.identify.detect_kind`).
* :func:`make_driver` - the driver of a kind; ``poll()`` reads, ``set_*`` write under the
  write policy (:class:`WriteGuard`), ``release()`` hands control back to the device.
"""

from __future__ import annotations

from edge.drivers.base import BadValues, Driver, DriverStats, Reading, VerifyError
from edge.drivers.factory import DRIVERS, DetectError, kind_from_models, make_driver
from edge.drivers.heat_pump import HeatPumpDriver
from edge.drivers.link import DeviceException, LinkDown, LinkError, LinkTimeout, ModbusLink
from edge.drivers.sunspec import BatteryDriver, InverterDriver, MeterDriver
from edge.drivers.write_policy import Decision, WriteGuard, WriteResult, WriteStatus

__all__ = [
    "DRIVERS",
    "BadValues",
    "BatteryDriver",
    "Decision",
    "DetectError",
    "DeviceException",
    "Driver",
    "DriverStats",
    "HeatPumpDriver",
    "InverterDriver",
    "LinkDown",
    "LinkError",
    "LinkTimeout",
    "MeterDriver",
    "ModbusLink",
    "Reading",
    "VerifyError",
    "WriteGuard",
    "WriteResult",
    "WriteStatus",
    "kind_from_models",
    "make_driver",
]
