"""What every simulated device shares: a register image, write checks, faults, stats.

A device keeps its *own* copy of its registers (``good``): the values it would answer if it
were healthy. Each fleet tick the device recomputes its measurement registers from the physics
(never per request) and copies ``good`` into the list the pymodbus server answers from
(``live``) - unless it is frozen (no copy) or producing garbage (a scrambled copy).

Writes reach :meth:`Device.action` through pymodbus's ``SimDevice(action=...)`` hook before
the server stores them: the device checks every written point (read-only and undefined
registers are already refused with exception 2 by the server, from the ``readonly`` flags we
give it), refuses out-of-range values with exception 3, and applies accepted ones to
``good`` and to its control state.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.faults import DeviceFaults

if TYPE_CHECKING:
    from firmware_sim.physics.site_model import FleetPhysics
    from protocols.clock import Clock

log = logging.getLogger("firmware_sim.device")

WRITE_FUNCTION_CODES = frozenset({6, 16, 23})


@dataclass
class DeviceStats:
    reads: int = 0
    writes: int = 0
    rejected_writes: int = 0
    dropped: int = 0  # requests left unanswered (timeout / reboot)
    disconnects: int = 0
    exceptions: int = 0  # fault-injected exception answers
    errors: int = 0  # unexpected errors while handling a request

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Device:
    """Base of the four device kinds. Subclasses fill the image and handle control writes."""

    kind: str
    site_id: str
    index: int  # the site's slot in the fleet's physics arrays
    unit_id: int
    phys: FleetPhysics
    clock: Clock
    start_addr: int = 0
    good: list[int] = field(default_factory=list)
    #: Per register: True if a client may write it.
    writable: list[bool] = field(default_factory=list)
    #: Per register: False for holes in the map (answer exception 2). Empty = all defined.
    defined: list[bool] = field(default_factory=list)
    live: list[int] | None = None
    faults: DeviceFaults = field(default_factory=DeviceFaults)
    stats: DeviceStats = field(default_factory=DeviceStats)
    #: Connections (request handlers) that have talked to this device, for disconnects.
    connections: set[Any] = field(default_factory=set)
    #: Registers that garbage must not touch (markers, model ids and lengths).
    structural: set[int] = field(default_factory=set)
    #: Told of every read this device serves, at the instant it is served (the fleet's
    #: read listeners: a test's or the demo's ground truth of what a client was given).
    on_read: Callable[[Device, float], None] | None = None

    # --- image plumbing -------------------------------------------------------------------

    def simdata(self) -> list[SimData]:
        """The image as pymodbus ``SimData`` runs, read-only where clients may not write."""
        runs: list[SimData] = []
        start = 0
        n = len(self.good)
        defined = self.defined or [True] * n
        while start < n:
            if not defined[start]:
                start += 1
                continue
            end = start
            while (
                end + 1 < n and defined[end + 1] and self.writable[end + 1] == self.writable[start]
            ):
                end += 1
            runs.append(
                SimData(
                    address=self.start_addr + start,
                    values=list(self.good[start : end + 1]),
                    datatype=DataType.REGISTERS,
                    readonly=not self.writable[start],
                )
            )
            start = end + 1
        return runs

    def sim_device(self) -> SimDevice:
        return SimDevice(id=self.unit_id, simdata=self.simdata(), action=self.action)

    def attach(self, live: list[int]) -> None:
        """Take the register list the server answers from (built by pymodbus from simdata)."""
        self.live = live

    def publish(self) -> None:
        """Copy the device's registers to what the server answers, as faults allow."""
        if self.live is None or self.faults.has("freeze"):
            return
        n = len(self.good)
        if self.faults.has("garbage"):
            self.live[:n] = self._garbage()
        else:
            self.live[:n] = self.good

    def _garbage(self) -> list[int]:
        rng = random.Random()
        patterns = (0xFFFF, 0x8000, 0x7FFF, 0x0000, 0xDEAD)
        out = list(self.good)
        for i in range(len(out)):
            if i in self.structural:
                continue
            r = rng.random()
            out[i] = rng.choice(patterns) if r < 0.5 else rng.randrange(0, 0x10000)
        return out

    # --- requests ----------------------------------------------------------------------------

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook, called before every read and write of this device."""
        if set_values is None or function_code not in WRITE_FUNCTION_CODES:
            self.stats.reads += 1
            if self.on_read is not None:
                self.on_read(self, self.clock.time())
            return None
        values = [int(v) for v in set_values]
        try:
            rc = self.check_and_apply(address, values)
        except Exception:  # a bug must not take the fleet down; the client sees "failure"
            log.exception("site=%s device=%s write at %d failed", self.site_id, self.kind, address)
            self.stats.errors += 1
            return ExcCodes.DEVICE_FAILURE
        if rc is not None:
            self.stats.rejected_writes += 1
            log.info(
                "site=%s device=%s rejected write addr=%d values=%s: exception %d",
                self.site_id,
                self.kind,
                address,
                values,
                int(rc),
            )
            return rc
        self.stats.writes += 1
        return None

    def check_and_apply(self, address: int, values: list[int]) -> ExcCodes | None:
        """Validate a write of ``values`` at ``address``; apply it if valid."""
        raise NotImplementedError

    def write_good(self, address: int, values: list[int]) -> None:
        off = address - self.start_addr
        self.good[off : off + len(values)] = values

    # --- life cycle --------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Recompute measurements from physics, run control timers; then :meth:`publish`."""
        raise NotImplementedError

    def apply_controls(self, now: float) -> None:
        """Push this device's control state into the physics' control arrays."""
        raise NotImplementedError

    def reset_controls(self) -> None:
        """Controls back to power-up defaults (after a reboot)."""
        raise NotImplementedError

    def set_online(self, online: bool) -> None:
        """Physical output on/off (off while rebooting)."""

    def control_state(self) -> dict[str, Any]:
        """Current control values, for the ground-truth API."""
        return {}
