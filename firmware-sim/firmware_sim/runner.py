"""Run a fleet and its control API until stopped: what ``vpp sim fleet`` calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from firmware_sim.control_api import ControlApi
from firmware_sim.fleet import Fleet
from protocols.clock import Clock

log = logging.getLogger("firmware_sim.runner")


async def run_fleet(
    *,
    sites: int,
    seed: int,
    clock: Clock,
    manifest: Path | None,
    host: str = "127.0.0.1",
    base_port: int = 0,
    api_port: int = 0,
    latency_s: float = 0.03,
    tick_s: float = 0.25,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``sites`` sites and the control API, write the manifest, serve until ``stop``."""
    fleet = Fleet(
        sites, seed, clock, host=host, base_port=base_port, latency_s=latency_s, tick_s=tick_s
    )
    api = ControlApi(fleet, host=host, port=api_port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    await api.start()
    try:
        if manifest is not None:
            fleet.write_manifest(manifest)
            log.info("manifest written to %s", manifest)
        print(f"fleet: {sites} sites / {4 * sites} devices, control API {api.url}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await api.stop()
        await fleet.stop()
