"""Telemetry by exception set as an operator sets it (the registry, pushed by the dispatcher
in each site's retained config), in the whole loop: real Mosquitto, Redis, firmware-sim
devices, edge agents, worker and dispatcher, in accelerated time.

The flag is on for the pool and off again for one partition, which is the same run without
it: same clock, same weather, same load on the machine. The rates are counted by a plain
MQTT subscriber (the demo's message-rate KPI counts the same way).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cloud.registry import Registry
from firmware_sim.fleet import site_id_for
from protocols.partitions import partition_of
from vpp.demo.flags import parse_flags

from .system_harness import PARTITIONS, running_system

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(180)]

SITES, SEED = 8, 21
WINDOW_S = 120.0  # simulated seconds counted (24 s of wall time at 5x)
FLAG = "edge.telemetry_by_exception"


def _control_partition() -> int:
    """The partition with the fewest sites, at least one: it keeps sending every interval."""
    parts = [partition_of(site_id_for(SEED, i), PARTITIONS) for i in range(SITES)]
    return min(set(parts), key=lambda p: (parts.count(p), p))


def _telemetry(counts: dict[str, dict[str, int]], site: str) -> int:
    return counts.get(site, {}).get("telemetry", 0)


async def test_telemetry_by_exception_for_the_pool_cuts_the_rate_and_loses_nothing(
    tmp_path, broker, redis_url
):
    control = _control_partition()
    flags = parse_flags([f"{FLAG}=true", f"partition:{control}:{FLAG}=false"], "north", PARTITIONS)
    async with running_system(
        tmp_path, broker, redis_url, sites=SITES, seed=SEED, flags=flags
    ) as system:
        clock = system.clock
        by_exception = {a.site_id: a.partition != control for a in system.agents}
        # the registry's values reached every agent in its config, and nothing else did
        assert {a.site_id: a.behaviour.telemetry_by_exception for a in system.agents} == (
            by_exception
        )
        await clock.sleep(10.0)  # past each site's first message under the flag
        t0, before = clock.time(), system.tap.message_counts()
        await clock.sleep(WINDOW_S)
        window, after = clock.time() - t0, system.tap.message_counts()
        flex = (await system.flexibility())["now"]

        def rate(flagged: bool) -> float:
            """Telemetry messages a site per simulated second, of the flagged or the others."""
            sites = [s for s, on in by_exception.items() if on is flagged]
            sent = sum(_telemetry(after, s) - _telemetry(before, s) for s in sites)
            return sent / len(sites) / window

        on, off = rate(True), rate(False)
        print(f"telemetry a site: {off:.3f} msg/s every interval, {on:.3f} by exception")
        assert off >= 0.4  # every 2 s (0.5), a slipped cycle aside
        assert off / on >= 3.0
        # held fresh by the heartbeat, every sequence number delivered
        assert flex["sites"]["fresh"] == SITES
        deadline = time.monotonic() + 10.0
        while True:
            expected, received = await system.tap.settled(system.telemetry_produced())
            if received == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert received == expected
        with Registry(tmp_path / "state" / "registry.sqlite", clock) as registry:
            history = registry.flag_history(FLAG)
        assert {(c.actor, c.scope, c.target) for c in history} == {
            ("vpp.system", "pool", "north"),
            ("vpp.system", "partition", str(control)),
        }
