"""Fixtures: a small fleet on free loopback ports, clients for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from firmware_sim.fleet import Fleet
from protocols.clock import ManualClock

# 2024-06-01 11:40 UTC: near solar noon in Belgium, so PV is well above zero.
T0 = 1717242000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0)


@pytest.fixture
async def fleet(clock: ManualClock) -> AsyncIterator[Fleet]:
    """One site, no latency, ticking only when a test calls ``fleet.tick()``."""
    f = Fleet(1, seed=42, clock=clock, latency_s=0.0, tick_s=3600.0)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


async def modbus(port: int, request_timeout_s: float = 1.0) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=request_timeout_s, retries=0)
    assert await client.connect()
    return client


async def advance(clock: ManualClock, fleet: Fleet, seconds: float, step: float = 10.0) -> None:
    """Move simulated time forward, ticking the fleet as its loop would."""
    remaining = seconds
    while remaining > 1e-9:
        dt = min(step, remaining)
        clock.advance(dt)
        fleet.tick()
        remaining -= dt
    await asyncio.sleep(0)
