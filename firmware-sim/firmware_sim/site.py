"""One site: four devices behind one Modbus TCP server (unit ids per device), with faults.

A site looks like a gateway / hybrid installation: one TCP endpoint, one unit id per device
(:data:`protocols.registers.UNIT_IDS`). Every device is still scannable on its own unit id by
any SunSpec client. One server per site rather than per device keeps a 500-device fleet at
125 listening sockets; the manifest names host, port and unit id per device, so a driver
works either way.

Faults and latency are applied in the request handler (a subclass of pymodbus's
``ServerRequestHandler``), the only place that knows the connection: it can leave a request
unanswered, close the connection, answer an exception, or wait before answering.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from firmware_sim.devices import DEVICE_CLASSES
from firmware_sim.devices.base import WRITE_FUNCTION_CODES
from protocols.registers import DEVICE_KINDS, UNIT_IDS

if TYPE_CHECKING:
    from firmware_sim.devices.base import Device
    from firmware_sim.physics.site_model import FleetPhysics
    from protocols.clock import Clock

log = logging.getLogger("firmware_sim.site")

DEFAULT_LATENCY_S = 0.03


class SiteRequestHandler(ServerRequestHandler):
    """One client connection to a site. Applies latency and the addressed device's faults."""

    def __init__(self, owner: SiteServer, *args: Any) -> None:
        super().__init__(owner, *args)
        self.site: Site = owner.site
        self.units: set[int] = set()

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        for uid in self.units:
            dev = self.site.by_unit.get(uid)
            if dev is not None:
                dev.connections.discard(self)

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if not pdu:
            return
        site = self.site
        dev = site.by_unit.get(pdu.dev_id)
        if dev is None:  # a gateway answers "target device failed to respond"
            self._send(
                ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE), pdu, addr
            )
            return
        if pdu.dev_id not in self.units:
            self.units.add(pdu.dev_id)
            dev.connections.add(self)
        faults = dev.faults
        latency = site.latency_s
        if faults:
            if faults.has("reboot") or faults.has("timeout"):
                dev.stats.dropped += 1
                return  # no answer: the client times out
            if faults.has("disconnect"):
                dev.stats.disconnects += 1
                self.close()
                return
            slow = faults.get("slow")
            if slow is not None and slow.latency_s is not None:
                latency = slow.latency_s
            exc = faults.get("exception")
            refuse = faults.get("refuse_writes")
            if exc is None and refuse is not None and pdu.function_code in WRITE_FUNCTION_CODES:
                exc = refuse  # reads go on as usual
            if exc is not None:
                if latency > 0:
                    await asyncio.sleep(latency)
                dev.stats.exceptions += 1
                code = ExcCodes(exc.exception_code or ExcCodes.DEVICE_BUSY)
                self._send(ExceptionResponse(pdu.function_code, code), pdu, addr)
                return
        if latency > 0:
            await asyncio.sleep(latency)
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except Exception as exc:  # never let one request take the server down
            dev.stats.errors += 1
            log.error(
                "site=%s device=%s request failed: %s\n%s",
                site.site_id,
                dev.kind,
                exc,
                traceback.format_exc(),
            )
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        self._send(response, pdu, addr)

    def _send(self, response: Any, pdu: Any, addr: Any) -> None:
        if not self.transport:  # closed meanwhile (disconnect fault, client gone)
            return
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)


class SiteServer(ModbusTcpServer):
    """A pymodbus TCP server whose connections use :class:`SiteRequestHandler`."""

    def __init__(self, site: Site, host: str, port: int) -> None:
        self.site = site
        super().__init__([d.sim_device() for d in site.devices], address=(host, port))

    def callback_new_connection(self) -> SiteRequestHandler:
        return SiteRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class Site:
    """Physics slot ``index`` of the fleet, its four devices and their server."""

    def __init__(
        self,
        site_id: str,
        index: int,
        phys: FleetPhysics,
        clock: Clock,
        latency_s: float = DEFAULT_LATENCY_S,
    ) -> None:
        self.site_id = site_id
        self.index = index
        self.phys = phys
        self.clock = clock
        self.latency_s = latency_s
        self.devices: list[Device] = [
            DEVICE_CLASSES[kind].create(site_id, index, UNIT_IDS[kind], phys, clock)
            for kind in DEVICE_KINDS
        ]
        self.by_kind: dict[str, Device] = {d.kind: d for d in self.devices}
        self.by_unit: dict[int, Device] = {d.unit_id: d for d in self.devices}
        self.server: SiteServer | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 = any free port); devices answer from then on."""
        self.server = SiteServer(self, host, port)
        for dev in self.devices:
            runtime = self.server.context.devices[dev.unit_id]  # type: ignore[union-attr]
            start, _count, registers, _flags = runtime.block["x"]
            if start != dev.start_addr:
                raise AssertionError(f"{dev.kind}: image starts at {start}, not {dev.start_addr}")
            dev.attach(registers)
        await self.server.serve_forever(background=True)
        sockets = self.server.transport.sockets  # type: ignore[union-attr]
        self.host, self.port = host, sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    def drop_connections(self, dev: Device) -> None:
        """Close every connection that has talked to ``dev`` (reboot, disconnect faults)."""
        for handler in list(dev.connections):
            dev.stats.disconnects += 1
            handler.close()
        dev.connections.clear()
