"""Fixtures: a one-site fleet on a fast SimClock, a shared link to it, drivers on the link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from edge.drivers import Driver, ModbusLink, make_driver
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock
from protocols.messages import DeviceKind

# 2024-06-01 11:40 UTC: near solar noon in Belgium, so PV is well above zero.
T0 = 1717242000.0
#: simulated seconds per wall second: a 1 s poll period is 50 ms of wall time
SPEED = 20.0
#: manifest kind -> driver kind
KINDS = {
    "inverter": DeviceKind.PV_INVERTER,
    "battery": DeviceKind.BATTERY,
    "meter": DeviceKind.METER,
    "heat_pump": DeviceKind.HEAT_PUMP,
}


@pytest.fixture
def clock() -> SimClock:
    return SimClock(speed=SPEED, start=T0)


@pytest.fixture
async def fleet(clock: SimClock) -> AsyncIterator[Fleet]:
    f = Fleet(1, seed=42, clock=clock, latency_s=0.002, tick_s=0.01)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
async def link(fleet: Fleet) -> AsyncIterator[ModbusLink]:
    site = fleet.sites[0]
    lk = ModbusLink(site.host, site.port, timeout_s=0.1, retries=1, backoff_s=0.01)
    try:
        yield lk
    finally:
        await lk.close()


@pytest.fixture
def drivers(fleet: Fleet, link: ModbusLink, clock: SimClock) -> Callable[..., Driver]:
    """``drivers("battery", revert_timeout_s=...)``: a driver for that manifest entry."""

    def build(kind: str, **kw) -> Driver:
        entry = next(d for d in fleet.manifest()["devices"] if d["kind"] == kind)
        return make_driver(KINDS[kind], kind, link, entry["unit_id"], clock, **kw)

    return build


async def until(
    clock: SimClock, check: Callable[[], Awaitable[bool]], sim_s: float, period_s: float = 1.0
) -> bool:
    """Call ``check`` every ``period_s`` clock seconds until it is true or ``sim_s`` passed."""
    end = clock.time() + sim_s
    while clock.time() < end:
        if await check():
            return True
        await clock.sleep(period_s)
    return await check()


async def settle() -> None:
    await asyncio.sleep(0.03)  # a few fleet ticks
