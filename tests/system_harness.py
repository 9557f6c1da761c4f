"""The whole loop on one machine for system tests, built by :mod:`vpp.system` as the demo is:
firmware-sim fleet, edge agents, real Mosquitto and Redis, the cloud's worker and API roles
in this process and one or more pool dispatchers made apart (a test can kill the leader and
watch a standby take over), all on one accelerated clock, with the devices' ground truth at
every tick. Teardown stops everything within bounded time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from protocols.flags import Override
from vpp.services import MosquittoServer
from vpp.system import T0, System, SystemSpec

__all__ = ["CYCLE_S", "PARTITIONS", "T0", "System", "judge", "running_system"]

PARTITIONS = 4
CYCLE_S = 2.0


@contextlib.asynccontextmanager
async def running_system(
    tmp_path: Path,
    broker: MosquittoServer,
    redis_url: str,
    *,
    sites: int = 10,
    speed: float = 5.0,
    t0: float = T0,
    dispatchers: int = 1,
    seed: int = 21,
    sim_tick_s: float = 0.25,
    flags: tuple[Override, ...] = (),
) -> AsyncIterator[System]:
    """The system of pool ``north``, once every site is fresh and in the pool's envelope.

    ``speed``: every role, agent and device runs in this one event loop, which at 10x took
    84 % of a core. The load grows with the speed (each site's Modbus round trips, client and
    server both in Python), and a system that gets less CPU than it needs falls behind the
    clock: Modbus answers time out, meters count as lost, tracking fails. At 5x it needs about
    40 % of a core, which the machine has while the other test worker runs (at 8x, two
    systems at once in CI lost their meters).

    ``sim_tick_s``: the devices' update period in simulated time (real inverters and
    battery systems refresh their registers within about a second; a coarser tick at a high
    speed makes the devices, not the loop, the slowest part: 1.5 s ticks at speed 15 cost
    several points of the 4-second tracking figure).

    ``broker``: as it is; when it admits only its users, the cloud connects as
    ``vpp-cloud`` and every site as ``vpp-site``, with password files and the broker's CA
    as an operator and an installer would configure them.

    ``flags``: overrides written into the registry before the cloud starts (as `vpp cloud
    flags set` does), so the sites start with them from their first config."""
    spec = SystemSpec(
        sites=sites,
        seed=seed,
        t0=t0,
        speed=speed,
        sim_tick_s=sim_tick_s,
        partitions=PARTITIONS,
        pool="north",
        cloud="in-process",
        dispatchers=dispatchers,
        # Leases of 2 s wall at least: at speed 15 the default 6 s are 0.4 s of wall time, and
        # one busy moment of this single process (every role, agent and device in one event
        # loop) would lose a worker its partitions. Nothing here tests lease expiry.
        settings={"cycle_s": 1.0, "dispatch_cycle_s": CYCLE_S, "lease_ttl_s": max(6.0, 2 * speed)},
        # Modbus timeouts in wall seconds: 1 s, so a busy moment of this process is not a
        # device failure (at 0.2 s, agents lost devices and degraded in CI).
        agent={"modbus_timeout_s": 1.0, "backlog_delay_max_s": 1.0},
        truth_window=None,  # every tick: tests judge whole activations
        flags=flags,
    )
    async with System(spec, tmp_path, broker, redis_url) as system:
        await system.wait_ready(envelope=True, timeout_s=120.0 / speed)
        yield system


def judge(samples: list[float], target: float, step: float) -> tuple[float, float]:
    """(mean error as a fraction of the step, share of samples within 10 % of the step)."""
    mean = sum(samples) / len(samples)
    within = sum(abs(g - target) <= 0.1 * abs(step) for g in samples) / len(samples)
    return abs(mean - target) / abs(step), within
