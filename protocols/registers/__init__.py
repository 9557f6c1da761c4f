"""Register maps of the device kinds vpp talks to over Modbus TCP.

* :mod:`protocols.registers.sunspec` - which SunSpec models each device kind exposes (PV
  inverter, battery, grid meter), why, where each point sits, and helpers that build a
  register image from pysunspec2's shipped model definitions.
* :mod:`protocols.registers.heat_pump` - the heat pump's own register map, as data.

Both the simulator (``firmware_sim``) and the edge agent's drivers use these tables, so the
two sides cannot drift apart. See ``README.md`` in this folder for the choices in prose.
"""

from __future__ import annotations

__all__ = ["DEVICE_KINDS", "UNIT_IDS"]

#: The four device kinds of a site, in manifest order.
DEVICE_KINDS: tuple[str, ...] = ("inverter", "battery", "meter", "heat_pump")

#: Modbus unit ids of the devices behind one site's Modbus TCP endpoint. A site is one TCP
#: server with four unit ids, the way a gateway / hybrid-inverter installation looks (e.g. a
#: hybrid inverter at 1, its battery at 2, the smart meter at 3, the heat pump behind the same
#: gateway at 4). The manifest states host, port and unit id per device; drivers must read
#: them from there rather than assume these numbers.
UNIT_IDS: dict[str, int] = {"inverter": 1, "battery": 2, "meter": 3, "heat_pump": 4}
