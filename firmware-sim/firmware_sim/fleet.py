"""N sites in one process and one event loop: physics tick, servers, manifest, faults, truth.

Every ``tick_s`` of wall time the fleet (1) expires faults and runs device control timers,
(2) pushes control state into the physics arrays, (3) advances the vectorised physics to the
clock's time, (4) rewrites every device's registers. Requests are answered from the register
images between ticks; no physics runs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_sim.faults import FAULT_KINDS, FaultError
from firmware_sim.physics.site_model import FleetPhysics
from firmware_sim.site import DEFAULT_LATENCY_S, Site
from protocols.atomic_file import write_file_atomic
from protocols.clock import Clock
from protocols.registers import DEVICE_KINDS
from protocols.registers.sunspec import DEVICE_MODELS

log = logging.getLogger("firmware_sim.fleet")

MANIFEST_SCHEMA = "vpp.sim.manifest"
MANIFEST_VERSION = 1


def site_id_for(seed: int, i: int) -> str:
    """Stable site ids: the same seed and index give the same id."""
    return f"sim-{seed}-{i:05d}"


class Fleet:
    """A fleet of simulated sites served from this process."""

    def __init__(
        self,
        n_sites: int,
        seed: int,
        clock: Clock,
        host: str = "127.0.0.1",
        base_port: int = 0,
        latency_s: float = DEFAULT_LATENCY_S,
        tick_s: float = 0.25,
    ) -> None:
        if n_sites < 1:
            raise ValueError(f"a fleet needs at least one site, got {n_sites}")
        if not (0 <= latency_s <= 10):
            raise ValueError(f"latency_s must be in [0, 10] s, got {latency_s}")
        self.n_sites, self.seed, self.clock = n_sites, seed, clock
        self.host, self.base_port, self.tick_s = host, base_port, tick_s
        self.phys = FleetPhysics(seed, n_sites, clock.time())
        self.sites: list[Site] = [
            Site(site_id_for(seed, i), i, self.phys, clock, latency_s) for i in range(n_sites)
        ]
        self.by_id: dict[str, Site] = {s.site_id: s for s in self.sites}
        #: called after every tick with the clock time: the physics (``phys``) and every
        #: register are at that instant (the ground truth a test or the demo records)
        self.tick_listeners: list[Callable[[float], None]] = []
        #: called for every read a device serves: (site index, device kind, clock time);
        #: what the client was given is the physics at that instant
        self.read_listeners: list[Callable[[int, str, float], None]] = []
        for site in self.sites:
            for dev in site.devices:
                dev.on_read = self._served
        self.control_api_url: str | None = None
        self.ticks = 0
        self.tick_wall_s = 0.0  # time spent in the last tick
        self.bad_requests = 0  # malformed control-API requests, counted
        self._task: asyncio.Task[None] | None = None

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for i, site in enumerate(self.sites):
            port = 0 if self.base_port == 0 else self.base_port + i
            await site.start(self.host, port)
        self.tick()
        self._task = asyncio.create_task(self._run(), name="fleet-tick")
        log.info(
            "fleet up: %d sites, %d devices, seed=%d", self.n_sites, 4 * self.n_sites, self.seed
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for site in self.sites:
            await site.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:  # keep serving; a physics bug shows in the log, not as an outage
                log.exception("fleet tick failed")

    def tick(self) -> None:
        t0 = time.perf_counter()
        now = self.clock.time()
        for site in self.sites:
            for dev in site.devices:
                if dev.faults:
                    for fault in dev.faults.expire(now):
                        if fault.kind == "reboot":
                            log.info("site=%s device=%s back from reboot", site.site_id, dev.kind)
                            dev.set_online(True)
                dev.apply_controls(now)
        self.phys.advance_to(now)
        for site in self.sites:
            for dev in site.devices:
                dev.refresh(now)
        self.ticks += 1
        self.tick_wall_s = time.perf_counter() - t0
        for listener in self.tick_listeners:
            listener(now)

    def _served(self, device: Any, now: float) -> None:
        for listener in self.read_listeners:
            listener(device.index, device.kind, now)

    # --- control ------------------------------------------------------------------------------

    def device(self, site_id: str, kind: str):
        site = self.by_id.get(site_id)
        if site is None:
            raise KeyError(f"no site {site_id!r}")
        if kind not in site.by_kind:
            raise KeyError(f"no device kind {kind!r}; known: {', '.join(DEVICE_KINDS)}")
        return site, site.by_kind[kind]

    def set_fault(
        self,
        site_id: str,
        kind: str,
        fault: str,
        duration_s: float | None = None,
        latency_s: float | None = None,
        exception_code: int | None = None,
    ) -> dict[str, Any]:
        site, dev = self.device(site_id, kind)
        now = self.clock.time()
        f = dev.faults.set(fault, now, duration_s, latency_s, exception_code)
        log.warning("site=%s device=%s fault %s set: %s", site_id, kind, fault, f.as_dict())
        if fault in {"disconnect", "reboot"}:
            site.drop_connections(dev)
        if fault == "reboot":
            dev.reset_controls()
            dev.set_online(False)
            dev.apply_controls(now)
        if fault == "freeze":
            pass  # publish() skips frozen devices from the next tick on
        return f.as_dict()

    def clear_fault(self, site_id: str, kind: str, fault: str | None = None) -> list[str]:
        _site, dev = self.device(site_id, kind)
        if fault is not None and fault not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {fault!r}; known: {', '.join(FAULT_KINDS)}")
        cleared = dev.faults.clear(fault)
        if "reboot" in cleared:
            dev.set_online(True)
        if cleared:
            log.warning("site=%s device=%s faults cleared: %s", site_id, kind, cleared)
            dev.publish()
        return cleared

    # --- views --------------------------------------------------------------------------------

    def faults(self) -> list[dict[str, Any]]:
        out = []
        for site in self.sites:
            for dev in site.devices:
                for f in dev.faults.active.values():
                    out.append({"site_id": site.site_id, "device": dev.kind, **f.as_dict()})
        return out

    def truth(self, site_id: str) -> dict[str, Any]:
        site = self.by_id.get(site_id)
        if site is None:
            raise KeyError(f"no site {site_id!r}")
        return {
            "site_id": site_id,
            "time": self.clock.time(),
            **self.phys.truth(site.index),
            "controls": {d.kind: d.control_state() for d in site.devices},
            "faults": {d.kind: sorted(d.faults.active) for d in site.devices if d.faults},
        }

    def stats(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for site in self.sites:
            for dev in site.devices:
                for k, v in dev.stats.as_dict().items():
                    totals[k] = totals.get(k, 0) + v
        return {
            "time": self.clock.time(),
            "sites": self.n_sites,
            "devices": 4 * self.n_sites,
            "ticks": self.ticks,
            "last_tick_ms": round(self.tick_wall_s * 1000, 2),
            "bad_control_requests": self.bad_requests,
            **totals,
        }

    def manifest(self) -> dict[str, Any]:
        """Where every device answers: site id, device kind, host, port, unit id."""
        devices = []
        for site in self.sites:
            for dev in site.devices:
                devices.append(
                    {
                        "site_id": site.site_id,
                        "kind": dev.kind,
                        "host": site.host,
                        "port": site.port,
                        "unit_id": dev.unit_id,
                        "protocol": "sunspec" if dev.kind in DEVICE_MODELS else "vpp-heat-pump-1",
                        "models": list(DEVICE_MODELS.get(dev.kind, ())),
                    }
                )
        try:
            clock_spec: str | None = self.clock.spec()
        except TypeError:  # a ManualClock (tests) cannot be shared
            clock_spec = None
        return {
            "schema": MANIFEST_SCHEMA,
            "version": MANIFEST_VERSION,
            "seed": self.seed,
            "clock": clock_spec,
            "control_api": self.control_api_url,
            "sites": [s.site_id for s in self.sites],
            # where each site is, as an installer enters it (PV forecasts need the sun's path)
            "locations": {
                s.site_id: {
                    "latitude": round(float(self.phys.p.lat_deg[i]), 4),
                    "longitude": round(float(self.phys.p.lon_deg[i]), 4),
                }
                for i, s in enumerate(self.sites)
            },
            "devices": devices,
        }

    def write_manifest(self, path: str | Path) -> None:
        """Write the manifest atomically (readers never see half a file)."""
        write_file_atomic(Path(path), json.dumps(self.manifest(), indent=2))
