"""The four simulated device kinds. Each maps physics state to its registers on a tick and
handles control writes through pymodbus's ``SimDevice(action=...)`` hook."""

from firmware_sim.devices.battery import Battery
from firmware_sim.devices.heat_pump import HeatPump
from firmware_sim.devices.inverter import Inverter
from firmware_sim.devices.meter import Meter

DEVICE_CLASSES = {"inverter": Inverter, "battery": Battery, "meter": Meter, "heat_pump": HeatPump}

__all__ = ["DEVICE_CLASSES", "Battery", "HeatPump", "Inverter", "Meter"]
